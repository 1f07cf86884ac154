"""Conversion route on real data: SynOp-target adherence and ANN estimate vs sinabs simulation (issue 3, section 7).

Trains a small CNN (zoo `digitsnet` at 1x28x28) on Fashion-MNIST once, then converts it with `synopt convert` for three
SynOp targets spanning a decade; every number is measured on the full test set simulated in sinabs.
Targets: simulated SynOps within +-5% of the target; QReLU-ANN estimate vs simulation within 3% (SynOps) and
0.5 points (accuracy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import materialize, write_section



def synopt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "synopt.cli", *args, "--quiet"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="2e5,6e5,2e6")
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--ann", help="reuse this digitsnet checkpoint (e.g. target0/source/ann.pt of an earlier run)")
    ap.add_argument("--time-aware-qat", action="store_true", help="QAT on count-coded input (convert --time-aware-qat)")
    ap.add_argument("--bias-timing", default="spread", help="synopt convert --bias-timing (docs/conversion.md)")
    ap.add_argument("--section", default="conversion-targets", help="docs/benchmarks.md section to write")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="synopt-bench-"))
    root = work / "data"
    materialize(root)
    common = ["--dataset", "fashion-mnist", "--data-root", str(root), "--epochs", str(args.epochs), "--lr", "3e-3",
              "--timesteps", str(args.timesteps), "--bias-timing", args.bias_timing,
              *(["--time-aware-qat"] if args.time_aware_qat else [])]
    rows = []
    ann = Path(args.ann) if args.ann else None
    for i, target in enumerate(args.targets.split(",")):
        out = work / f"target{i}"
        src = ["--model", "digitsnet", "--input", "1x28x28"]
        src += ["--checkpoint", str(ann)] if ann else ["--train-epochs", str(args.train_epochs)]
        synopt("convert", *src, *common, "--target-synops", target, "--out", str(out))
        ann = ann or out / "source" / "ann.pt"
        m = json.loads((out / "metrics.json").read_text())
        p = m["points"][0]
        rows.append({"target": float(target), "sim_synops": p["sim_synops"], "qrelu_synops": p["qrelu_synops"],
                     "sim_acc": p["sim_accuracy"], "qrelu_acc": p["qrelu_accuracy"], "ann_acc": m["ann_accuracy"],
                     "baseline_acc": m["baseline"]["sim_accuracy"], "baseline_synops": m["baseline"]["sim_synops"],
                     "c": p.get("calibration_scale"), "macs": m["macs"],
                     "ta_acc": p.get("qrelu_time_aware_accuracy"), "ta_synops": p.get("qrelu_time_aware_synops")})
        print(json.dumps(rows[-1]))
    r0 = rows[0]
    body = (f"Fashion-MNIST, zoo `digitsnet` at 1x28x28 ({r0['macs']:,} MACs), ANN trained {args.train_epochs} epochs "
            f"(test accuracy {100 * r0['ann_acc']:.2f}%), "
            f"QAT {args.epochs} epochs per target{' (time-aware: on count-coded input)' if args.time_aware_qat else ''}, "
            f"T = {args.timesteps}, count coding, biases {args.bias_timing} (--bias-timing), full test set (10,000) "
            f"simulated in sinabs. Baseline SNN (plain weights, θ = 1): {100 * r0['baseline_acc']:.2f}% at "
            f"{r0['baseline_synops']:,.0f} SynOps.\n\n"
            "| target S0 | simulated SynOps | vs target | QReLU estimate | estimate vs sim | SNN acc | QReLU acc | "
            "acc gap [pt] | calibration c |\n|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        body += (f"| {r['target']:,.0f} | {r['sim_synops']:,.0f} | {100 * (r['sim_synops'] / r['target'] - 1):+.2f}% | "
                 f"{r['qrelu_synops']:,.0f} | {100 * (r['qrelu_synops'] / r['sim_synops'] - 1):+.2f}% | "
                 f"{100 * r['sim_acc']:.2f}% | {100 * r['qrelu_acc']:.2f}% | {100 * (r['sim_acc'] - r['qrelu_acc']):+.2f} | "
                 f"{r['c']:.3f} |\n")
    if args.time_aware_qat:
        body += ("\nTime-aware estimate (the QReLU network run on the count-coded frames, `temporal.py`) vs the SNN: "
                 + "; ".join(f"{r['target']:,.0f}: {100 * r['ta_acc']:.2f}% / {r['ta_synops']:,.0f} SynOps"
                             for r in rows) + "\n")
    title = "Conversion: SynOp-target adherence and ANN estimate vs simulation"
    write_section(args.section, title + (" (time-aware QAT)" if args.time_aware_qat else ""), body)


if __name__ == "__main__":
    main()
