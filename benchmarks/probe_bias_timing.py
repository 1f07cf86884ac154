"""When should a bias enter an IF neuron? A probe on the QReLU points of a CIFAR-10 run (bench_conversion_cifar.py).

Under count coding the SNN injects every bias as b/T per step (``--bias-timing spread``, the default). An IF
neuron's count is floor(max_t V_t), not floor(V_T) (qrelu.if_spike_counts), so a negative bias spread over T steps
cannot stop the spikes that early positive input already caused. This probe takes each point's network and measures
it on count-coded test images:

* ``static`` -- the QReLU network on the whole image (Eq. 3 of 003_*; what static QAT trains);
* each timing of ``convert/bias_timing.py`` (spread, negative-first, signed) through the exact IF counts of the
  time-aware QReLU (``qat.estimate`` on ``temporal.CountCoded``), and with ``--sinabs`` through the sinabs
  simulation of the converted network (``simulate``), an independent check.

    python benchmarks/probe_bias_timing.py --run /tmp/cifar25/qrelu-rel --points 4 --static-phase --sinabs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common import write_section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the QAT run folder of bench_conversion_cifar.py (under its --work)")
    ap.add_argument("--points", default="4", help="comma-separated point indices")
    ap.add_argument("--static-phase", action="store_true",
                    help="the weights at the end of each point's static epochs (before its time-aware epoch)")
    ap.add_argument("--samples", type=int, default=2000, help="first test images")
    ap.add_argument("--sinabs", action="store_true",
                    help="also simulate each bias timing in sinabs (accuracy column 'sinabs')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--section", default="probe-bias-timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from torch.utils.data import Subset

    from synopt import data, energy
    from synopt.convert.bias_timing import BIAS_TIMINGS
    from synopt.convert.pipeline import prepare_options
    from synopt.convert.qat import estimate, qrelu_network
    from synopt.convert.source import ModelSource, load_model
    from synopt.convert.temporal import CountCoded
    from synopt.convert.to_sinabs import to_sinabs
    from synopt.graph import prepare
    from synopt.runs import load_checkpoint
    from synopt.simulate.run import simulate

    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text())["config"]
    m = json.loads((run / "metrics.json").read_text())
    prepared, _ = prepare(load_model(ModelSource(**cfg["source"]))[0], **prepare_options(cfg))
    prepared.eval()
    account = energy.analyze(prepared, tuple(m["input_shape"]))
    steps = cfg["timesteps"]
    test = data.load(cfg["dataset"], cfg["data_root"], split_seed=cfg["seed"]).test
    test = Subset(test, range(min(args.samples, len(test))))
    rows = []
    for i in (int(k) for k in args.points.split(",")):
        if args.static_phase:
            sd = load_checkpoint(run / "checkpoints" / f"point{i}-static" / "last.pt")["state_dict"]
            sd = {k.removeprefix("qnet."): v for k, v in sd.items()}
        else:
            sd = load_checkpoint(run / "points" / f"point{i}.pt")["state_dict"]
        for mode in ("static", *BIAS_TIMINGS):
            qnet = qrelu_network(prepared, m["rho"], "spread" if mode == "static" else mode)
            qnet.load_state_dict(sd)
            acc, syn, _ = estimate(qnet, account, test if mode == "static" else CountCoded(test, steps), len(test),
                                   batch_size=250)
            check = ""
            if args.sinabs and mode != "static":
                snn = to_sinabs(qnet.net, encoding="count", bias_timing=mode)
                check = f" {100 * simulate(snn, test, steps, account.input_shape, progress=False).accuracy:.2f}% |"
            elif args.sinabs:
                check = " - |"
            rows.append(f"| {i} | {mode} | {100 * acc:.2f}% |{check} {syn:,.0f} | {syn / m['macs']:.3f} |")
            print(rows[-1], flush=True)
    p = m["points"]
    body = "\n".join([
        f"Run {run.name}: {'the weights after the static epochs of each point (before its time-aware epoch)' if args.static_phase else 'the saved points'}; "
        f"first {len(test):,} test images, T = {steps}, count coding; {m['macs']:,} MACs. For reference the "
        "pipeline's own time-aware estimate / sinabs simulation of the saved points: "
        + "; ".join(f"point {i}: {100 * p[i].get('qrelu_time_aware_accuracy', float('nan')):.2f}% / "
                    f"{100 * p[i]['sim_accuracy']:.2f}%" for i in (int(k) for k in args.points.split(","))
                    if i < len(p)) + ". *acc*: the time-aware QReLU estimate (`qat.estimate` on count-coded images; "
        "static: the QReLU network on the whole image); *sinabs acc*: `simulate` of "
        "`to_sinabs(..., bias_timing=...)`.", "",
        "| point | bias timing | acc |" + (" sinabs acc |" if args.sinabs else "") + " SynOps | SynOps / MACs |",
        "|---|---|---|" + ("---|" if args.sinabs else "") + "---|---|", *rows])
    write_section(args.section, "Probe: when the biases enter the IF neurons (CIFAR-10 QAT points)", body)


if __name__ == "__main__":
    main()
