"""SNN simulation time / time of T ANN forward passes, for a converted 5-layer CNN (B=64, 1x28x28, T=10).

Target (issue 3): <= 1.2 for synopt's IF layers. sinabs' own IAFSqueeze is measured alongside for reference.
"""

from __future__ import annotations

import argparse
import statistics

import sinabs
import torch
import torch.nn as nn

from common import paired_ratio, write_section
from synopt.convert.to_sinabs import to_sinabs
from synopt.simulate.run import encode


def cnn5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(64 * 3 * 3, 128), nn.ReLU(), nn.Linear(128, 10))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=31)
    args = ap.parse_args()
    torch.manual_seed(0)
    ann = cnn5().eval()
    b, t = args.batch, args.timesteps
    x = torch.rand(b, 1, 28, 28)
    snn = to_sinabs(ann, encoding="count")
    x_seq = encode(x, t, "count").contiguous()

    sinabs_net = sinabs.from_model(ann, input_shape=(1, 28, 28), batch_size=b, add_spiking_output=True).spiking_model

    def ann_passes():
        with torch.no_grad():
            for _ in range(t):
                ann(x)

    def ours():
        with torch.no_grad():
            snn(x_seq)

    def theirs():
        with torch.no_grad():
            sinabs.reset_states(sinabs_net)
            sinabs_net(x_seq.reshape(b * t, 1, 28, 28))

    rows = []
    for label, fn in (("synopt IFSqueeze", ours), ("sinabs IAFSqueeze", theirs)):
        med, ratios, base, sim = paired_ratio(fn, ann_passes, args.pairs)
        q = statistics.quantiles(ratios, n=4)
        rows.append((label, med, q[0], q[2], base * 1e3, sim * 1e3))
        print(f"{label}: {t} ANN passes {base * 1e3:.1f} ms, simulation {sim * 1e3:.1f} ms, paired ratio {med:.3f} "
              f"(IQR {q[0]:.3f}-{q[2]:.3f})")
    body = (f"5-layer CNN (3 conv + 2 linear, avg pooling), batch {b}, 1x28x28, T = {t}, count coding, CPU "
            f"({torch.get_num_threads()} threads). Ratio = simulation time / time of {t} ANN forward passes, "
            f"median over {args.pairs} back-to-back pairs (order alternating), with the interquartile range. "
            "Target <= 1.2.\n\n"
            "| IF layer | T ANN passes [ms] | simulation [ms] | ratio (median) | IQR |\n|---|---|---|---|---|\n")
    body += "\n".join(f"| {r[0]} | {r[4]:.1f} | {r[5]:.1f} | {r[1]:.3f} | {r[2]:.3f}-{r[3]:.3f} |" for r in rows)
    write_section("simulation-speed", "SNN simulation speed vs T ANN passes", body)


if __name__ == "__main__":
    main()
