"""How much the dropout/BN variance shift costs a network during training (default: CIFAR-10 All-ConvNet x0.25, BN).

Trains the ANN as bench_conversion_cifar.py does (crop + flip, Adam 1e-3, cosine over ``--epochs``, bf16) and after
each epoch of ``--report-at`` evaluates it on the test set as trained and after ``recalibrate_batchnorm`` (BN
statistics re-estimated on ``--samples`` training images with dropout off; finetune/bn_stats.py, on a copy).

    python benchmarks/probe_bn_recalibration.py [--epochs 4] [--report-at 1,2,4] [--work DIR]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from bench_conversion_cifar import ann_config
from common import materialize, write_section



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="allconvnet", help="zoo model (allconvnet gets --width and BN)")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--train-samples", type=int, default=50000)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--report-at", default="1,2,4", help="comma-separated epochs to evaluate at")
    ap.add_argument("--samples", type=int, default=10000, help="training images for the re-estimation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/probe-bn")
    ap.add_argument("--section", default="probe-bn-recalibration")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from synopt import data, zoo
    from synopt.finetune.bn_stats import recalibrate_batchnorm
    from synopt.finetune.train import evaluate, fit, seeded_subset

    root = Path(args.work) / "data"
    if not root.is_dir():
        materialize(root)
    splits = data.load(args.dataset, str(root), split_seed=0)
    cifar = args.model == "allconvnet"
    train = data.load(args.dataset, str(root), split_seed=0, augment="crop+flip").train if cifar else splits.train
    at = {int(e) for e in args.report_at.split(",")}
    rows = []

    def on_epoch_end(epoch: int, row: dict) -> None:
        if epoch + 1 not in at:
            return
        as_trained = evaluate(net, splits.test)
        copy_ = copy.deepcopy(net)
        recalibrate_batchnorm(copy_, splits.train, args.samples, seed=0)
        rows.append((epoch + 1, row["train_acc"], as_trained, evaluate(copy_, splits.test)))
        print(rows[-1], flush=True)

    torch.manual_seed(0)
    net = zoo.build(args.model, **({"width": args.width, "batch_norm": True} if cifar else {}))
    fit(net, seeded_subset(train, args.train_samples, 0), None, ann_config(args.epochs, bf16=True),
        on_epoch_end=on_epoch_end, desc="ANN")
    what = (f"CIFAR-10 All-ConvNet x{args.width:g} with BN, dropout 0.2 on the input and 0.1 after every conv "
            f"(003_* §2.4.2), trained {args.epochs} epochs on {args.train_samples:,} images as in "
            f"bench_conversion_cifar.py (cosine over these epochs)" if cifar else
            f"{args.dataset}, zoo {args.model}, trained {args.epochs} epochs on {args.train_samples:,} images (Adam "
            f"1e-3, cosine over these epochs, bf16 autocast, no augmentation)")
    n_test = len(splits.test)
    lines = [f"{what}. Test accuracy on all {n_test:,} test images as trained and after re-estimating the BN "
             f"statistics on {args.samples:,} training images with dropout off (`recalibrate_batchnorm`).", "",
             f"| epoch | train acc ({'augmented, ' if cifar else ''}dropout on) | test acc as trained | test acc recalibrated | change [pt] |",
             "|---|---|---|---|---|",
             *[f"| {e} | {100 * tr:.2f}% | {100 * a:.2f}% | {100 * b:.2f}% | {100 * (b - a):+.2f} |"
               for e, tr, a, b in rows]]
    write_section(args.section, f"Probe: BN statistics re-estimated with dropout off ({args.dataset} {args.model})",
                  "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
