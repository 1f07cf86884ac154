"""Direct route on Fashion-MNIST with CNN7 (issue 4, section 5), at a CPU-sized budget.

Same data subset, epochs, optimiser (Adam, Table 6 of 000_*: lr 1e-3, lambda_WD 1e-4, cosine) for:
a ReLU CNN7; the single-step CNN7 with the S2NN surrogate (lambda' = 0, the energy baseline); Omega_syn (p = 1) at
increasing lambda'; and the STE-s and SLAYER surrogates at lambda' = 0. Accuracy and E_SNN on the full test set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Subset

from common import materialize, write_section



def direct(work: Path, name: str, root: Path, args, *extra: str) -> dict:
    out = work / name
    cmd = [sys.executable, "-m", "synopt.cli", "finetune", "--direct", "--model", "cnn7", "--dataset",
           "fashion-mnist", "--data-root", str(root), "--epochs", str(args.epochs), "--train-samples",
           str(args.train_samples), "--threads", str(args.threads), "--out", str(out), "--quiet", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def relu_accuracy(root: Path, args) -> float:
    from synopt import data, zoo
    from synopt.finetune.train import TrainConfig, evaluate, fit

    torch.manual_seed(args.seed)
    splits = data.load("fashion-mnist", root, split_seed=args.seed)
    perm = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(args.seed))[:args.train_samples]
    model = zoo.build("cnn7")
    fit(model, Subset(splits.train, perm.tolist()), None,
        TrainConfig(epochs=args.epochs, batch_size=100, lr=1e-3, weight_decay=1e-4, seed=args.seed, progress=False))
    return evaluate(model, splits.test)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-samples", type=int, default=12000)
    ap.add_argument("--lambdas", default="16,64,256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1 avoids oversubscription)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="synopt-direct-"))
    root = work / "data"
    materialize(root)
    relu = relu_accuracy(root, args)
    print(f"ReLU CNN7: {100 * relu:.2f}%")
    base = direct(work, "s2nn-0", root, args, "--surrogate", "s2nn", "--penalty", "none")
    print("s2nn lambda'=0", base["accuracy"], base["e_snn_j"])
    rows = [("S2NN, no penalty (baseline)", base)]
    for lam in args.lambdas.split(","):
        m = direct(work, f"syn-{lam}", root, args, "--surrogate", "s2nn", "--penalty", "syn", "--p", "1",
                   "--lambda-norm", lam, "--baseline", str(work / "s2nn-0"))
        rows.append((f"S2NN, Omega_syn p=1, lambda'={lam}", m))
        print(lam, m["accuracy"], m["e_snn_over_baseline"])
    for sur in ("ste_s", "slayer"):
        m = direct(work, f"{sur}-0", root, args, "--surrogate", sur, "--penalty", "none", "--baseline",
                   str(work / "s2nn-0"))
        rows.append((f"{sur}, no penalty", m))
        print(sur, m["accuracy"])
    body = (f"Fashion-MNIST, CNN7 (Table 5 of 000_*), {args.train_samples:,} training images (seeded subset), "
            f"{args.epochs} epochs, batch 100, {args.threads} torch thread(s), Adam lr 1e-3, lambda_WD 1e-4, cosine; S2NN alpha 0.25, tau 0.6 "
            f"(Table 6). Full test set (10,000). ReLU CNN7 with the same budget: **{100 * relu:.2f}%**.\n\n"
            "| model | accuracy | E_SNN [uJ] | E_SNN / baseline | dead rate | R |\n|---|---|---|---|---|---|\n")
    for label, m in rows:
        body += (f"| {label} | {100 * m['accuracy']:.2f}% | {m['e_snn_j'] * 1e6:.3f} | "
                 f"{100 * (m.get('e_snn_over_baseline') or 1.0):.1f}% | {100 * m['dead_rate']:.1f}% | "
                 f"{100 * m['R']:.2f}% |\n")
    write_section("direct-fmnist", "Direct route: CNN7 on Fashion-MNIST", body)


if __name__ == "__main__":
    main()
