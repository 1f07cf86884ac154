"""Conversion route on real N-MNIST recordings with the Sorbaro MNIST-DVS network (issue 3, section 7, DVS).

Trains the zoo `mnistdvs` network on the time-collapsed event images, then converts it: baseline (plain weights,
θ = 1) and QReLU + SynOp loss at a target of 1/6 of the baseline SynOps. Both are simulated on the events,
framed as 3,000-event frames (Sorbaro) and as 10 time bins. Reported as measured, including where it falls short.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_section

SHARED = Path(os.environ.get("SYNOPT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def synopt(*args: str) -> dict:
    subprocess.run([sys.executable, "-m", "synopt.cli", *args, "--quiet"], check=True, stdout=subprocess.DEVNULL)
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-epochs", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="synopt-dvs-"))
    root = work / "data"
    subprocess.run([sys.executable, str(SHARED / "data" / "materialize.py"), str(root)], check=True)
    base = ["--model", "mnistdvs", "--dataset", "nmnist", "--data-root", str(root)]
    m0 = synopt("convert", *base, "--train-epochs", str(args.train_epochs), "--method", "rho", "--rho", "1",
                "--event-count", "3000", "--out", str(work / "ann"))
    ann = str(work / "ann" / "source" / "ann.pt")
    rows = []
    for label, framing in (("3,000-event frames", ["--event-count", "3000"]), ("10 time bins", ["--timesteps", "10"])):
        b = synopt("convert", *base, "--checkpoint", ann, "--method", "rho", "--rho", "1", *framing,
                   "--out", str(work / f"base-{len(rows)}"))["baseline"]
        target = b["sim_synops"] / 6
        m = synopt("convert", *base, "--checkpoint", ann, "--target-synops", f"{target:.0f}", "--epochs",
                   str(args.epochs), "--lr", "3e-3", *framing, "--out", str(work / f"qat-{len(rows)}"))
        p = m["points"][0]
        rows.append((label, b, p, target))
        print(label, json.dumps({"baseline": [b["sim_accuracy"], b["sim_synops"]],
                                 "qat": [p["sim_accuracy"], p["sim_synops"], p["qrelu_accuracy"], p["qrelu_synops"]]}))
    body = (f"N-MNIST (real recordings; 900 train / 100 validation / 100 test), zoo `mnistdvs` at 2x34x34, ANN trained "
            f"{args.train_epochs} epochs on time-collapsed event counts: test accuracy {100 * m0['ann_accuracy']:.1f}%. "
            f"QAT {args.epochs} epochs, target = baseline SynOps / 6. SynOps exclude the input events "
            "(they do not depend on the weights). 100 test samples: 1 sample = 1 point.\n\n"
            "| framing | baseline SNN acc | baseline SynOps | QAT target | QReLU ANN acc | QReLU ANN SynOps | "
            "QAT SNN acc | QAT SNN SynOps | SNN SynOp cut |\n|---|---|---|---|---|---|---|---|---|\n")
    for label, b, p, target in rows:
        body += (f"| {label} | {100 * b['sim_accuracy']:.0f}% | {b['sim_synops']:,.0f} | {target:,.0f} | "
                 f"{100 * p['qrelu_accuracy']:.0f}% | {p['qrelu_synops']:,.0f} | {100 * p['sim_accuracy']:.0f}% | "
                 f"{p['sim_synops']:,.0f} | {b['sim_synops'] / p['sim_synops']:.2f}x |\n")
    write_section("conversion-dvs", "Conversion on N-MNIST events (MNIST-DVS network)", body)


if __name__ == "__main__":
    main()
