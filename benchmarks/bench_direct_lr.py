"""S2NN vs ReLU CNN7 at the same budget, each with its learning rate chosen on the validation split (issue 4).

000_* grid-searched the learning rate on a validation split (App. A.2, Table 6) for 150-epoch runs; at a CPU budget
of a few epochs the best rate differs, and a binary-activation net suffers more from a rate tuned for long runs.
For every rate of ``--lrs``: a ReLU CNN7 (``train_ann``) and the single-step CNN7 with the S2NN surrogate (no
penalty, ``synopt finetune --direct``), same subset, epochs, batch 100, Adam, cosine, lambda_WD 1e-4. Each route
keeps the rate with the best final validation accuracy; the full test set decides the gap.

    python benchmarks/bench_direct_lr.py --train-samples 24000 --epochs 4 --lrs 1e-3,3e-3,1e-2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import materialize, write_section



def relu_run(out: Path, root: Path, lr: float, args) -> dict:
    from synopt.finetune.ann import train_ann

    if not (out / "metrics.json").is_file():
        train_ann("cnn7", "fashion-mnist", str(root), out, epochs=args.epochs, lr=lr, batch_size=100,
                  weight_decay=1e-4, seed=args.seed, progress=False, train_samples=args.train_samples)
    m = json.loads((out / "metrics.json").read_text())
    return {"test": m["test_acc"], "val": m["history"][-1]["val_acc"], "history": m["history"]}


def s2nn_run(out: Path, root: Path, lr: float, args) -> dict:
    if not (out / "metrics.json").is_file():
        subprocess.run([sys.executable, "-m", "synopt.cli", "finetune", "--direct", "--model", "cnn7", "--dataset",
                        "fashion-mnist", "--data-root", str(root), "--surrogate", "s2nn", "--penalty", "none",
                        "--lr", str(lr), "--epochs", str(args.epochs), "--train-samples", str(args.train_samples),
                        "--seed", str(args.seed), "--threads", str(args.threads), "--out", str(out), "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
    m = json.loads((out / "metrics.json").read_text())
    return {"test": m["accuracy"], "val": m["history"][-1]["val_acc"], "history": m["history"],
            "synops": m["synops"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-samples", type=int, default=24000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="rate grid of both routes")
    ap.add_argument("--relu-lrs", help="ReLU rate grid (default --lrs), e.g. the rate chosen at a smaller budget")
    ap.add_argument("--s2nn-lrs", help="S2NN rate grid (default --lrs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="/tmp/bench-direct-lr")
    ap.add_argument("--section", default="direct-lr", help="docs/benchmarks.md section to write")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    work = Path(args.work)
    root = work / "data"
    materialize(root, quiet=True)
    grid = {"ReLU": [float(v) for v in (args.relu_lrs or args.lrs).split(",")],
            "S2NN": [float(v) for v in (args.s2nn_lrs or args.lrs).split(",")]}
    lrs = sorted(set(grid["ReLU"]) | set(grid["S2NN"]))
    runs: dict[str, dict[float, dict]] = {"ReLU": {}, "S2NN": {}}
    for lr in lrs:
        if lr in grid["ReLU"]:
            runs["ReLU"][lr] = relu_run(work / f"relu-lr{lr:g}", root, lr, args)
        if lr in grid["S2NN"]:
            runs["S2NN"][lr] = s2nn_run(work / f"s2nn-lr{lr:g}", root, lr, args)
        print(lr, {k: (v[lr]["val"], v[lr]["test"]) for k, v in runs.items() if lr in v}, flush=True)
    best = {k: max(v, key=lambda lr: v[lr]["val"]) for k, v in runs.items()}
    gap = 100 * (runs["ReLU"][best["ReLU"]]["test"] - runs["S2NN"][best["S2NN"]]["test"])
    same = (100 * (runs["ReLU"][1e-3]["test"] - runs["S2NN"][1e-3]["test"])
            if 1e-3 in runs["ReLU"] and 1e-3 in runs["S2NN"] else None)

    def cell(route: str, lr: float, key: str) -> str:
        return f"{100 * runs[route][lr][key]:.2f}%" if lr in runs[route] else "-"

    def gap_cell(lr: float) -> str:
        if lr in runs["ReLU"] and lr in runs["S2NN"]:
            return f"{100 * (runs['ReLU'][lr]['test'] - runs['S2NN'][lr]['test']):.2f} pt"
        return "-"
    lines = [
        f"Fashion-MNIST, CNN7, {args.train_samples:,} training images (seeded subset) x {args.epochs} epochs, batch "
        f"100, Adam, cosine, lambda_WD 1e-4, seed {args.seed}, {args.threads} torch thread(s); validation split "
        "6,000 images (selects the rate), full test set (10,000). S2NN: alpha 0.25, tau 0.6, no penalty. "
        f"Rates run: ReLU {grid['ReLU']}, S2NN {grid['S2NN']}.",
        "",
        "| lr | ReLU val | ReLU test | S2NN val | S2NN test | gap (test) |",
        "|---|---|---|---|---|---|",
        *[f"| {lr:g} | {cell('ReLU', lr, 'val')} | {cell('ReLU', lr, 'test')} | {cell('S2NN', lr, 'val')} | "
          f"{cell('S2NN', lr, 'test')} | {gap_cell(lr)} |" for lr in lrs],
        "",
        f"- rate {'chosen on validation' if max(map(len, grid.values())) > 1 else 'given (one per route)'}: ReLU {best['ReLU']:g}, S2NN {best['S2NN']:g}; test accuracy ReLU "
        f"{100 * runs['ReLU'][best['ReLU']]['test']:.2f}% vs S2NN {100 * runs['S2NN'][best['S2NN']]['test']:.2f}%: "
        f"gap {gap:.2f} pt ({'within' if gap <= 1.5 else 'NOT within'} the issue's 1.5 pt)",
    ]
    if same is not None:
        lines.append(f"- at the paper's Adam rate 1e-3 for both: gap {same:.2f} pt")
    write_section(args.section, "Direct route: S2NN vs ReLU with the learning rate chosen on validation"
                  + (f" ({args.train_samples:,} images)" if args.section != "direct-lr" else ""), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
