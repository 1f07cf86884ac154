"""Cost of the exact SynOp term in a training step: (step with synops loss) / (plain step), median of runs.

Target (issue 2): <= 1.05. Models: CNN7 (1x28x28, batch 100) and VGG11 (3x32x32, batch 32).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import median_time, write_section
from synopt import energy, zoo


def step_fn(model, x, y, opt, account=None):
    def step():
        if account is None:
            loss = F.cross_entropy(model(x), y)
        else:
            with energy.ActivityRecorder(model, account) as rec:
                logits = model(x)
            loss = F.cross_entropy(logits, y) + 1e-9 * rec.synops(len(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5, help="independent plain/penalised pairs; median ratio")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, batch in (("cnn7", 100), ("vgg11", 32)):
        spec = zoo.get_spec(name)
        model = zoo.build(name)
        shape = (spec.in_channels, *spec.input_size)
        t0 = time.perf_counter()
        account = energy.analyze(model, shape)
        analyze_s = time.perf_counter() - t0
        x = torch.rand(batch, *shape)
        y = torch.randint(0, spec.num_classes, (batch,))
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        ratios, plain_t, pen_t = [], [], []
        for _ in range(args.rounds):
            plain = median_time(step_fn(model, x, y, opt), args.repeats)
            pen = median_time(step_fn(model, x, y, opt, account), args.repeats)
            ratios.append(pen / plain)
            plain_t.append(plain)
            pen_t.append(pen)
        ratios.sort()
        med = ratios[len(ratios) // 2]
        rows.append((name, batch, sorted(plain_t)[len(plain_t) // 2] * 1e3, sorted(pen_t)[len(pen_t) // 2] * 1e3,
                     med, analyze_s))
        print(f"{name}: plain {rows[-1][2]:.1f} ms, with SynOp term {rows[-1][3]:.1f} ms, ratio {med:.3f} "
              f"(rounds {', '.join(f'{r:.3f}' for r in ratios)}); analyze() {analyze_s:.2f} s")
    body = ("Training step (forward + backward + Adam) with the exact SynOp term `rec.synops()` added to the loss, "
            "divided by the same step without it. Median of "
            f"{args.rounds} rounds, each the median of {args.repeats} steps. Target: <= 1.05.\n\n"
            "| model | batch | plain step [ms] | with SynOp term [ms] | ratio | one-off analyze() [s] |\n"
            "|---|---|---|---|---|---|\n")
    body += "\n".join(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.3f} | {r[5]:.2f} |" for r in rows)
    write_section("energy-overhead", "SynOp term overhead in a training step", body)


if __name__ == "__main__":
    main()
