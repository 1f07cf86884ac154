"""Conversion route on real N-MNIST recordings with the Sorbaro MNIST-DVS network (issue 3, section 7, DVS).

Trains the zoo `mnistdvs` network on time-collapsed event images, then converts it: baseline (plain weights,
θ = 1) and QReLU + SynOp loss at a target of 1/cut of the baseline SNN's SynOps. Both are simulated on the events,
framed as 3,000-event frames (Sorbaro) and as 10 time bins. Variants:

* ``event`` (the pipeline's defaults for event data): the ANN trains on prefix-augmented images, QAT is time-aware
  on random framings, estimates and calibration are taken on the simulated framing (``convert/temporal.py``);
* ``image``: ANN and QAT on whole-recording images as before issue 3's fix (the estimates and the calibration are
  still taken on the simulated framing, so its SynOps meet the target too).

``--folds N`` cross-validates over all 1,100 recordings (``fold_root``): with only 100 test recordings per split, one
run's accuracy has a standard error of about 3.5 pt, larger than the 1.3 pt the issue allows.

Runs in-process through ``run_conversion`` with ``--threads`` torch threads. Reported as measured.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import tempfile
from pathlib import Path

from common import materialize, write_section

FRAMINGS = (("3,000-event frames", {"frames": {"event_count": 3000}}), ("10 time bins", {"timesteps": 10}))
VARIANTS = {"event": {}, "image": {"event_augment": None, "temporal_qat": False}}


def convert(out: Path, root: Path, checkpoint: str | None, seed: int, overrides: dict, **kw) -> dict:
    from synopt.convert.pipeline import ConvertConfig, run_conversion
    from synopt.convert.source import ModelSource

    metrics_file = out / "metrics.json"
    if metrics_file.exists():  # finished earlier: reuse (delete the folder to re-measure)
        return json.loads(metrics_file.read_text())
    source = ModelSource("zoo", name="mnistdvs", checkpoint=checkpoint, overrides=overrides)
    cfg = ConvertConfig(source=source, dataset="nmnist", data_root=str(root), out=str(out), seed=seed, progress=False,
                        **kw)
    return run_conversion(cfg)


def fold_root(work: Path, root: Path, fold: int, folds: int) -> Path:
    """Data root of cross-validation fold ``fold`` of ``folds``: fold 0 is the standard split (``root``); fold k >= 1
    tests on the k-th of ``folds - 1`` disjoint chunks of a seeded permutation of the train recordings and trains on
    the other train recordings plus the standard test set (symlinks), so that across all folds every recording is
    tested exactly once."""
    if fold == 0:
        return root
    base = root / "NMNIST"
    train = sorted(base.glob("Train/*/*.bin"))
    test = sorted(base.glob("Test/*/*.bin"))
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    chunk = [train[i] for i in order[(fold - 1) * len(train) // (folds - 1):fold * len(train) // (folds - 1)]]
    out = work / "folds" / f"f{fold}of{folds}"
    if not (out / "done").exists():  # a stale half-built root is rebuilt
        shutil.rmtree(out, ignore_errors=True)
        held = set(chunk)
        for f in train + test:
            dst = out / "NMNIST" / ("Test" if f in held else "Train") / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(f.resolve())
        (out / "done").write_text(f"{len(chunk)} test recordings\n")
    return out


def _timing_tag(args) -> str:
    """Folder/file suffix of a non-default ``--bias-timing`` (empty for spread, so older work folders stay valid)."""
    return "" if args.bias_timing == "spread" else f"-{args.bias_timing}"


def run_variant(name: str, work: Path, root: Path, seed: int, args, fold: int = 0) -> list[dict]:
    """ANN training, then per framing the baseline SNN and the QAT point at baseline SynOps / cut."""
    opts = {**VARIANTS[name], "bias_timing": args.bias_timing}
    if args.event_augment and name == "event":
        opts["event_augment"] = args.event_augment
    root = fold_root(work, root, fold, args.folds)
    base = work / (f"{name}{args.ann_tag}-s{seed}" if fold == 0 else f"{name}{args.ann_tag}-f{fold}-s{seed}")
    model = {"dropout": False} if args.no_dropout else {}
    m0 = convert(base / "ann", root, None, seed, model, method="rho", rho=1.0, train_epochs=args.train_epochs,
                 frames={"event_count": 3000}, **opts)
    ann = str(base / "ann" / "source" / "ann.pt")
    rows = []
    for i, (label, framing) in enumerate(FRAMINGS):
        if label not in args.framings:
            continue
        timing = _timing_tag(args)  # the ANN is shared by timings
        b = convert(base / f"baseline-{i}{timing}", root, ann, seed, model, method="rho", rho=1.0, **framing,
                    **opts)["baseline"]
        target = b["sim_synops"] / args.cut
        m = convert(base / f"qat-{i}{args.qat_tag}{timing}", root, ann, seed, model, method="qrelu",
                    target_synops=target * 2 ** (args.points - 1), schedule_points=args.points, epochs=args.epochs,
                    lr=args.lr, target_control=args.target_control, **framing, **opts)
        p = m["points"][-1]  # the last point of a halving schedule is at baseline / cut
        row = {"variant": name, "seed": seed, "fold": fold, "framing": label, "ann_acc": m0["ann_accuracy"],
               "base_acc": b["sim_accuracy"], "base_synops": b["sim_synops"], "target": target,
               "est_acc": p["qrelu_accuracy"], "est_synops": p["qrelu_synops"],
               "img_acc": p.get("qrelu_image_accuracy", p["qrelu_accuracy"]),
               "img_synops": p.get("qrelu_image_synops", p["qrelu_synops"]),
               "calibration": p.get("calibration_scale"), "rho": m.get("rho"),
               "qat_acc": p["sim_accuracy"], "qat_synops": p["sim_synops"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def table(rows: list[dict]) -> str:
    head = ("| variant | seed | framing | ANN acc | rho | baseline SNN acc | baseline SynOps | QAT target | "
            "calibration c | image estimate acc / SynOps | time-aware estimate = SNN | QAT SNN acc | QAT SNN SynOps | "
            "SNN SynOp cut | acc change |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = ""
    for r in rows:
        same = r["est_acc"] == r["qat_acc"] and abs(r["est_synops"] / r["qat_synops"] - 1) < 1e-6
        seed = f"{r['seed']} / fold {r['fold']}" if r.get("fold") else f"{r['seed']}"
        body += (f"| {r['variant']} | {seed} | {r['framing']} | {_pct(r['ann_acc'])} | {r['rho']:g} | "
                 f"{_pct(r['base_acc'])} | {r['base_synops']:,.0f} | {r['target']:,.0f} | {r['calibration']:.2f} | "
                 f"{_pct(r['img_acc'])} / {r['img_synops']:,.0f} | {'yes' if same else 'no'} | "
                 f"{_pct(r['qat_acc'])} | {r['qat_synops']:,.0f} | {r['base_synops'] / r['qat_synops']:.2f}x | "
                 f"{100 * (r['qat_acc'] - r['base_acc']):+.0f} pt |\n")
    return head + body


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = float(rank)
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (no tie correction; nan below 3 pairs)."""
    if len(x) < 3:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    return statistics.correlation(rx, ry) if len(set(rx)) > 1 and len(set(ry)) > 1 else math.nan


def summary(rows: list[dict]) -> str:
    out = ("| variant | framing | runs | baseline SNN acc | QAT SNN acc | acc change (± s.e. over runs) | "
           "per-run change | Spearman(QAT target, change) | SNN SynOp cut (lowest) | "
           "issue target met (cut >= 6x, loss <= 1.3 pt) |\n|---|---|---|---|---|---|---|---|---|---|\n")
    keys = sorted({(r["variant"], r["framing"]) for r in rows}, key=lambda k: (k[0] != "event", k[1]))
    for variant, framing in keys:
        rs = [r for r in rows if r["variant"] == variant and r["framing"] == framing]
        base = statistics.mean(r["base_acc"] for r in rs)
        qat = statistics.mean(r["qat_acc"] for r in rs)
        cut = statistics.mean(r["base_synops"] / r["qat_synops"] for r in rs)
        change = [100 * (r["qat_acc"] - r["base_acc"]) for r in rs]
        se = f" ± {statistics.stdev(change) / len(rs) ** 0.5:.1f}" if len(rs) > 1 else ""
        lowest = min(r["base_synops"] / r["qat_synops"] for r in rs)
        met = cut >= 6 and 100 * (base - qat) <= 1.3
        out += (f"| {variant} | {framing} | {len(rs)} | {100 * base:.1f}% | {100 * qat:.1f}% | "
                f"{100 * (qat - base):+.1f}{se} pt | {' / '.join(f'{c:+.0f}' for c in change)} | "
                f"{spearman([r['target'] for r in rs], change):+.2f} | {cut:.2f}x "
                f"({lowest:.2f}x) | {'yes' if met else 'no'} |\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-epochs", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--target-control", type=float, default=None,
                    help="closed-loop QAT target gain (0: off; default: the pipeline's, 0.5 on event data)")
    ap.add_argument("--cut", type=float, default=6.0, help="QAT target = baseline SNN SynOps / cut")
    ap.add_argument("--points", type=int, default=1, help="reach the target by a halving schedule of this many "
                                                          "points (Sorbaro 2.4.2 step 3), --epochs each")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the event variant")
    ap.add_argument("--image-seeds", type=int, nargs="*", default=[0], help="seeds of the image (pre-fix) variant")
    ap.add_argument("--framings", nargs="+", default=[f for f, _ in FRAMINGS], choices=[f for f, _ in FRAMINGS])
    ap.add_argument("--qat-tag", default="", help="suffix of the QAT run folders (qat-I<tag>): a second QAT setting "
                                                  "on the same ANNs and baselines")
    ap.add_argument("--no-dropout", action="store_true", help="build mnistdvs without its dropout (0.5 on the "
                                                               "48-feature head at 34x34)")
    ap.add_argument("--event-augment", help="the event variant's training augmentation (the pipeline's default: "
                                            "prefix; e.g. prefix+shift)")
    ap.add_argument("--ann-tag", default="", help="suffix of the per-seed folders (event<tag>-sN): another ANN recipe")
    ap.add_argument("--folds", type=int, default=1, help="cross-validation over the 1,100 recordings: fold 0 is the "
                                                          "standard split, folds 1..N-1 test on disjoint chunks of "
                                                          "the train recordings")
    ap.add_argument("--fold", type=int, nargs="*", help="run only these folds (default: all)")
    ap.add_argument("--bias-timing", default="spread", help="synopt convert --bias-timing for every SNN here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default="conversion-dvs", help="docs/benchmarks.md section key")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--reference", help="rows.json of an earlier run (e.g. the open-loop gain 0) to show next to "
                                        "this one")
    args = ap.parse_args()
    if args.points < 1:
        ap.error(f"--points must be >= 1 (got {args.points})")
    if args.folds < 1 or any(not 0 <= k < args.folds for k in args.fold or []):
        ap.error(f"--folds must be >= 1 and every --fold in 0..{args.folds - 1} (got {args.folds}, {args.fold})")
    folds = range(args.folds) if args.fold is None else args.fold
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="synopt-dvs-"))
    root = work / "data"
    materialize(root)
    runs = [("event", s) for s in args.seeds] + [("image", s) for s in args.image_seeds]
    rows = [r for k in folds for v, s in runs for r in run_variant(v, work, root, s, args, k)]
    (work / f"rows{args.ann_tag}{args.qat_tag}{_timing_tag(args)}.json").write_text(json.dumps(rows, indent=1))
    gain = "0.5 (the default)" if args.target_control is None else format(args.target_control, "g")
    split = ("900 train / 100 validation / 100 test" if args.folds == 1 else
             f"{args.folds}-fold cross-validation over all 1,100 recordings, each fold 900 train / 100 validation / "
             f"100 test; fold 0 is the standard split, fold k tests on the k-th of {args.folds - 1} disjoint chunks "
             f"of a seeded permutation of the train recordings; folds run: {', '.join(map(str, folds))}")
    body = (f"N-MNIST (real recordings; {split}), zoo `mnistdvs` at 2x34x34"
            f"{' without dropout' if args.no_dropout else ''}"
            f"{f', training augmentation {args.event_augment}' if args.event_augment else ''}, ANN trained "
            f"{args.train_epochs} epochs; QAT {args.epochs} epochs at lr {args.lr:g}"
            + (f" per point of a {args.points}-point halving schedule (from 2^{args.points - 1} x the target, each "
               "point initialised from the previous one)" if args.points > 1 else "")
            + f", target = baseline SNN SynOps / {args.cut:g}; closed-loop target gain {gain}; biases "
            f"{args.bias_timing} (--bias-timing); {args.threads} torch "
            "thread(s). Variants: **event** = "
            "the pipeline's defaults for event data (ANN on prefix-augmented images, time-aware QAT on random "
            "framings of 30 time bins into the "
            "simulated framing's frame counts, rho choice and calibration on the time-aware estimate of the "
            "simulated framing); **image** = ANN and QAT on whole-recording images as before the fix (estimates and "
            "calibration still on the simulated framing). *Image estimate*: the QReLU network on the collapsed test "
            "images, which the pre-fix pipeline calibrated on; *time-aware estimate = SNN*: whether the time-aware "
            "estimate on the test frames equals the simulation in accuracy and SynOps. SynOps exclude the input "
            "events (they do not depend on the weights). 100 test samples per run: 1 sample = 1 point, so a "
            "1.3-point difference is below the resolution of one run (binomial s.e. about 3.5 points at 85%)"
            + (f"; over the {len(folds)} folds each recording is tested once, and the s.e. of the mean change is "
               "taken over the folds' paired changes" if len(folds) == args.folds > 1 else "") + ".\n\n"
            + summary(rows) + "\n" + table(rows))
    if args.reference:
        ref = json.loads(Path(args.reference).read_text())
        body += (f"\nReference run `{args.reference}` (same ANNs and baselines; e.g. the open-loop target):\n\n"
                 + summary(ref) + "\n" + table(ref))
    if not args.no_write:
        title = "Conversion on N-MNIST events (MNIST-DVS network)"
        title += f", QAT {args.epochs} epochs" if args.qat_tag else ""
        title += f", {args.folds}-fold cross-validation" if args.folds > 1 else ""
        title += f" x {args.points} halving points" if args.points > 1 else ""
        title += ", ANN without dropout" if args.no_dropout else ""
        title += f", {args.event_augment} augmentation" if args.event_augment else ""
        write_section(args.section, title, body)
    print(body)


if __name__ == "__main__":
    main()
