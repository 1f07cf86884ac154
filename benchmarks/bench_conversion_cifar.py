"""CIFAR-10 All-ConvNet, section 2.4.2 / 3.2.2 of 003_* at a reduced CPU protocol (issue 3, section 7).

1. Train the All-ConvNet ANN (``--width`` scales its channels; 1.0 is the paper's network) on a subset.
2. First-layer scaling baseline: transfer the weights to the SNN, scale the first layer by ρ, simulate T = 10 steps
   with count coding (input current x/T), for a grid of ρ (step 2 of the paper's procedure).
3. From a ρ whose SNN has SynOps > MACs (by default the cheapest within 1 point of the best such ρ), QReLU +
   SynOp-loss fine-tuning with the target halved point by point (step 3), each point simulated in sinabs.
Checks: the SynOp-loss curve needs >= 10x fewer SynOps than the ρ curve at equal accuracy, and reaches
SynOps <= 0.42 x MACs within 1 point of its own ANN.

    python benchmarks/bench_conversion_cifar.py [--width 0.5] [--train-samples 20000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from common import materialize, write_section



TIMING_NOTE = {"spread": "as b/T per step", "negative-first": "negative ones at the first step, positive ones b/T per "
               "step (--bias-timing negative-first)", "signed": "negative ones at the first step, positive ones at "
               "the last (--bias-timing signed)"}


def synops_at_accuracy(curve: list[tuple[float, float]], acc: float) -> float:
    """SynOps the ρ curve needs to reach ``acc``: its monotone envelope (best accuracy so far, by SynOps),
    log-linear interpolation between the two points around ``acc``; inf if it never gets there."""
    env, best = [], -1.0
    for syn, a in sorted(curve):
        if a > best:
            env.append((syn, a))
            best = a
    for (s0, a0), (s1, a1) in zip(env, env[1:]):
        if a0 <= acc <= a1:
            f = (acc - a0) / (a1 - a0) if a1 > a0 else 0.0
            return math.exp(math.log(s0) + f * (math.log(s1) - math.log(s0)))
    if env and acc <= env[0][1]:
        return env[0][0]
    return math.inf


def compare(points: list[dict], curve: list[tuple[float, float]]) -> tuple[list[tuple], float, float]:
    """Rows (target, SynOps, acc, compared-at acc, rho SynOps there, ratio, estimate acc, c) of the QAT points
    against a rho curve, the best counted ratio (accuracies both curves reach) and the best bound (points above the
    whole curve, compared at its top: they reach it with at most their SynOps; a bound, not an extrapolation)."""
    top = max(a for _, a in curve)
    rows = []
    for p in points:
        at = min(p["sim_accuracy"], top)
        need = synops_at_accuracy(curve, at)
        rows.append((p["target"], p["sim_synops"], p["sim_accuracy"], at, need, need / p["sim_synops"],
                     p.get("qrelu_time_aware_accuracy", p["qrelu_accuracy"]), p.get("calibration_scale", 1.0)))
    best_ratio = max((r[5] for r in rows if r[3] == r[2]), default=math.nan)
    best_bound = max((r[5] for r in rows if r[3] < r[2]), default=math.nan)
    return rows, best_ratio, best_bound


def ann_config(epochs: int, bf16: bool):
    """How the ANN is trained here (Adam 1e-3, weight decay 1e-4, cosine, batch 64, seed 0)."""
    from synopt.finetune.train import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, weight_decay=1e-4, schedule="cosine", seed=0, bf16=bf16)


def control_ann(work: Path, ann: torch.nn.Module, splits, args, epochs: int | None = None) -> Path:
    """The ANN fine-tuned like a QAT point, without what QAT adds: ``epochs`` (default ``--control-epochs``) epochs
    on the QAT images (no augmentation), Adam at ``--qat-lr`` with a cosine schedule, dropout off as in QAT, plain
    ReLU, no SynOp loss. Its rho curve tells what the extra training alone buys; with ``--ann-finetune-epochs`` it
    is the ANN every curve starts from."""
    import copy

    from synopt.finetune.train import TrainConfig, fit, seeded_subset
    from synopt.runs import save_checkpoint

    epochs = args.control_epochs if epochs is None else epochs
    tag = f"-bn{args.recalibrate_bn}" if args.recalibrate_bn else ""
    out = work / f"ann{tag}-control{epochs}.pt"
    if not out.is_file():
        torch.manual_seed(0)
        net = copy.deepcopy(ann)
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        train = seeded_subset(splits.train, args.qat_samples or args.train_samples, 0)
        cfg = TrainConfig(epochs=epochs, batch_size=64, lr=args.qat_lr, schedule="cosine", seed=0)
        fit(net, train, splits.val, cfg, checkpoint_dir=work / f"ann{tag}-control{epochs}-ckpt", desc="control ANN")
        save_checkpoint(out, {"state_dict": net.state_dict()})
    return out


def recalibrated_ann(work: Path, net: torch.nn.Module, splits, samples: int) -> tuple[Path, list[float]]:
    """``net`` with its BN statistics re-estimated on ``samples`` training images, dropout off
    (``--recalibrate-bn``), saved once as ``WORK/ann-bnN.pt`` and loaded into ``net``; returns that path and the
    test accuracy before/after."""
    from synopt.finetune.bn_stats import recalibrate_batchnorm
    from synopt.finetune.train import evaluate
    from synopt.runs import load_checkpoint, save_checkpoint

    out = work / f"ann-bn{samples}.pt"
    if not out.is_file():
        before = evaluate(net, splits.test)
        recalibrate_batchnorm(net, splits.train, samples, seed=0)
        save_checkpoint(out, {"state_dict": net.state_dict(), "test_accuracy": [before, evaluate(net, splits.test)]})
    state = load_checkpoint(out)
    net.load_state_dict(state["state_dict"])
    return out, state["test_accuracy"]


def recheck(work: Path, ann, m_q: dict, q_dir: Path, test, args) -> list[str]:
    """Table rows for the rho values and QAT points of ``--recheck-*`` simulated on ``--recheck-samples`` test images
    (each result cached in ``WORK/recheck.json`` under its network and sample count)."""
    from synopt.convert.pipeline import prepare_options
    from synopt.convert.qat import qrelu_network
    from synopt.convert.rho import scale_first_layer
    from synopt.convert.to_sinabs import to_sinabs
    from synopt.graph import prepare
    from synopt.runs import load_checkpoint
    from synopt.simulate.run import simulate

    cache_path = work / "recheck.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    prepared, _ = prepare(ann, **prepare_options({}))  # the pipeline's defaults, as in every run compared here
    prepared.eval()
    nets = [(f"rho = {float(r):g}", f"rho={float(r):g}", lambda r=float(r): scale_first_layer(prepared, r))
            for r in filter(None, args.recheck_rhos.split(","))]
    for i in (int(i) for i in filter(None, args.recheck_points.split(","))):
        p = m_q["points"][i]

        def point_net(i=i):
            qnet = qrelu_network(prepared, m_q["rho"])
            qnet.load_state_dict(load_checkpoint(q_dir / "points" / f"point{i}.pt")["state_dict"])
            return qnet.net

        nets.append((f"QAT {q_dir.name} {p['label']}", f"{q_dir.name}/point{i}", point_net))
    rows = []
    for name, key, build in nets:
        key = f"{key}@{args.recheck_samples}" + ("" if args.bias_timing == "spread" else f"/{args.bias_timing}")
        if key not in cache:
            snn = to_sinabs(build(), encoding="count", bias_timing=args.bias_timing)
            r = simulate(snn, test, args.timesteps, (3, 32, 32), samples=args.recheck_samples, progress=True)
            cache[key] = {"accuracy": r.accuracy, "synops": r.synops}
            cache_path.write_text(json.dumps(cache, indent=1))
        rows.append(f"| {name} | {100 * cache[key]['accuracy']:.2f}% | {cache[key]['synops']:,.0f} |")
    return rows


def control_lines(work: Path, ann: torch.nn.Module, splits, overrides: dict, common: dict, m_q: dict, macs: int,
                  args) -> list[str]:
    """The report on the control ANN (``control_ann``): its rho curve and the QAT points against it."""
    from synopt.convert.pipeline import ConvertConfig, run_conversion
    from synopt.convert.source import ModelSource

    ckpt_c = control_ann(work, ann, splits, args)
    rho_dir = work / f"{args.rho_dir}-control{args.control_epochs}"
    m_c = (json.loads((rho_dir / "metrics.json").read_text()) if (rho_dir / "metrics.json").is_file() else
           run_conversion(ConvertConfig(out=str(rho_dir), method="rho", rhos=[float(r) for r in args.rhos.split(",")],
                                        **{**common, "source": ModelSource("zoo", name="allconvnet",
                                                                           checkpoint=str(ckpt_c),
                                                                           overrides=overrides)})))
    curve = [(p["sim_synops"], p["sim_accuracy"]) for p in m_c["points"]]
    rows, best_ratio, best_bound = compare(m_q["points"], curve)
    within = [r for r in rows if r[2] >= m_c["ann_accuracy"] - 0.01]
    return [
        f"Control: the same ANN fine-tuned {args.control_epochs} epochs like a QAT point (the QAT images, no "
        f"augmentation, Adam {args.qat_lr:g} cosine, no dropout) but with plain ReLU and no SynOp loss: test accuracy "
        f"{100 * m_c['ann_accuracy']:.2f}% (the ANN above: {100 * m_q['ann_accuracy']:.2f}%). Its rho curve:", "",
        "| rho | SNN acc | SynOps | SynOps / MACs |", "|---|---|---|---|",
        *[f"| {p['rho']:g} | {100 * p['sim_accuracy']:.2f}% | {p['sim_synops']:,.0f} | {p['sim_synops'] / macs:.3f} |"
          for p in m_c["points"]],
        "", "The QReLU points against the control's rho curve:", "",
        "| SNN SynOps | SNN acc | control rho curve needs | ratio |", "|---|---|---|---|",
        *[f"| {s:,.0f} | {100 * a:.2f}% | {n:,.0f}{f' (at {100 * at:.2f}%)' if at < a else ''} | "
          f"{'>= ' if at < a else ''}{r:.1f}x |" for _, s, a, at, n, r, _, _ in rows],
        "",
        (f"- against the control: best ratio at accuracies both reach {best_ratio:.1f}x "
         f"({'meets' if best_ratio >= 10 else 'does NOT meet'} >= 10x)" if math.isfinite(best_ratio) else
         "- against the control: no QReLU point lies at an accuracy its rho curve reaches")
        + (f"; best bound above its top >= {best_bound:.1f}x" if math.isfinite(best_bound) else ""),
        (f"- lowest SynOps within 1 point of the control ANN: {min(r[1] for r in within) / macs:.3f} x MACs"
         if within else "- no QReLU point stays within 1 point of the control ANN"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch-norm", action="store_true",
                    help="BN after every hidden conv (folded before conversion; trains far faster on a CPU budget)")
    ap.add_argument("--train-samples", type=int, default=20000)
    ap.add_argument("--qat-samples", type=int, default=None, help="training images per QAT epoch (default: all "
                    "--train-samples)")
    ap.add_argument("--ann-epochs", type=int, default=6)
    ap.add_argument("--bf16-ann", action="store_true",
                    help="train the ANN under CPU bfloat16 autocast (1.75x faster with AVX512-BF16; QAT stays fp32)")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--target-control", type=float, default=None,
                    help="closed-loop QAT target gain (default: the pipeline's, 0 = Eq. 2 as published on images)")
    ap.add_argument("--time-aware-qat", action="store_true",
                    help="QAT, rho choice and calibration on count-coded input (T x the cost; exact IF counts)")
    ap.add_argument("--time-aware-epochs", type=int, default=None,
                    help="with --time-aware-qat: only the last N QAT epochs of each point time-aware")
    ap.add_argument("--time-aware-samples", type=int, default=None,
                    help="with --time-aware-qat: the time-aware epochs on a subset of this many training images")
    ap.add_argument("--first-fraction", type=float, default=0.5,
                    help="first target = this fraction of the starting rho's SNN SynOps (0.5: the paper's halving)")
    ap.add_argument("--no-calibrate", action="store_true",
                    help="report every point where QAT left it (no first-layer calibration onto the target, as in "
                         "the paper's procedure)")
    ap.add_argument("--relative-lr", action="store_true",
                    help="QAT learning rate of every tensor x its scale against the ANN (convert --relative-lr)")
    ap.add_argument("--halve-from", choices=("target", "achieved"), default="target",
                    help="next target = previous target / 2, or the SynOps the previous point reached / 2 (step 3a)")
    ap.add_argument("--qat-dir", default="qrelu", help="folder under --work for the QAT run (reuse ANN and rho)")
    ap.add_argument("--report-only", action="store_true",
                    help="write the section from the points the QAT run has finished so far (no training)")
    ap.add_argument("--section", default="conversion-cifar", help="docs/benchmarks.md section key")
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--rhos", default="1,2,4,8,16,32")
    ap.add_argument("--rho-dir", default="rho", help="folder under --work for the rho curve (reused when present)")
    ap.add_argument("--start-rho", type=float, default=None,
                    help="the rho QAT starts from (default: the most accurate one with SynOps > MACs; a finished or "
                         "resumed QAT run keeps its own)")
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--bias-timing", default="spread",
                    help="when the biases enter the IF neurons (synopt convert --bias-timing), for every SNN here")
    ap.add_argument("--rho-timing",
                    help="another bias timing for the rho curve only, e.g. spread: the baseline as published (its "
                         "ratios then credit the bias timing as well as the SynOp loss)")
    ap.add_argument("--recheck-samples", type=int, default=0,
                    help="re-simulate --recheck-rhos and --recheck-points on this many test images (cached in "
                         "WORK/recheck.json) to resolve differences below the 1,000-image resolution")
    ap.add_argument("--recheck-rhos", default="", help="comma-separated rho values of the curve to re-simulate")
    ap.add_argument("--recheck-points", default="", help="comma-separated indices of the QAT points to re-simulate")
    ap.add_argument("--control-epochs", type=int, default=0,
                    help="also fine-tune the ANN this many epochs like QAT but without quantization or SynOp loss, "
                         "and compare the QAT points to that control ANN's rho curve")
    ap.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                    help="re-estimate the trained ANN's BN statistics on N training images with dropout off "
                         "(finetune/bn_stats.py) and use that ANN for every curve here")
    ap.add_argument("--ann-finetune-epochs", type=int, default=0, metavar="E",
                    help="fine-tune the trained ANN E epochs like the control (no augmentation, no dropout, Adam at "
                         "--qat-lr) and start every curve from that ANN, so QAT's extra epochs add no fit the ANN "
                         "lacked")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/bench-cifar")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from synopt import data, energy, zoo
    from synopt.convert.pipeline import ConvertConfig, run_conversion
    from synopt.convert.source import ModelSource
    from synopt.finetune.train import fit, seeded_subset
    from synopt.runs import load_checkpoint, save_checkpoint

    work = Path(args.work)
    root = work / "data"
    if not root.is_dir():
        materialize(root)
    overrides = {"width": args.width, **({"batch_norm": True} if args.batch_norm else {})}
    ckpt = work / "ann.pt"
    splits = data.load("cifar10", str(root), split_seed=0)
    if not ckpt.is_file():
        torch.manual_seed(0)
        net = zoo.build("allconvnet", **overrides)
        train = seeded_subset(data.load("cifar10", str(root), split_seed=0, augment="crop+flip").train,
                              args.train_samples, 0)
        cfg = ann_config(args.ann_epochs, args.bf16_ann)
        fit(net, train, splits.val, cfg, checkpoint_dir=work / "ann-ckpt", desc="All-ConvNet ANN")
        save_checkpoint(ckpt, {"state_dict": net.state_dict()})
    net = zoo.build("allconvnet", **overrides)
    net.load_state_dict(load_checkpoint(ckpt)["state_dict"])
    bn_note = " and BN (folded before conversion)" if args.batch_norm else ""
    ann_note = ""  # what was done to the trained ANN before the curves
    if args.recalibrate_bn:
        ckpt, recal = recalibrated_ann(work, net, splits, args.recalibrate_bn)
        ann_note += (f"; its BN statistics re-estimated on {args.recalibrate_bn:,} training images with dropout off "
                     f"(test accuracy {100 * recal[0]:.2f}% -> {100 * recal[1]:.2f}%)")
    if args.ann_finetune_epochs:
        if args.control_epochs:
            raise SystemExit("--ann-finetune-epochs already starts from the control ANN; drop --control-epochs")
        ckpt = control_ann(work, net, splits, args, epochs=args.ann_finetune_epochs)
        net.load_state_dict(load_checkpoint(ckpt)["state_dict"])
        ann_note += (f"; then fine-tuned {args.ann_finetune_epochs} epochs without augmentation or dropout (Adam "
                     f"{args.qat_lr:g}, cosine; --ann-finetune-epochs)")
    macs = energy.analyze(net, (3, 32, 32)).macs
    source = ModelSource("zoo", name="allconvnet", checkpoint=str(ckpt), overrides=overrides)
    common = dict(source=source, dataset="cifar10", data_root=str(root), timesteps=args.timesteps,
                  eval_samples=args.eval_samples, train_samples=args.qat_samples or args.train_samples, epochs=args.qat_epochs,
                  batch_size=64, bias_timing=args.bias_timing, progress=True)
    rho_dir = work / args.rho_dir
    rho_timing = args.rho_timing or args.bias_timing
    m_rho = (json.loads((rho_dir / "metrics.json").read_text()) if (rho_dir / "metrics.json").is_file() else
             run_conversion(ConvertConfig(out=str(rho_dir), method="rho",
                                          rhos=[float(r) for r in args.rhos.split(",")],
                                          **{**common, "bias_timing": rho_timing})))
    ann_acc = m_rho["ann_accuracy"]
    curve = [(p["sim_synops"], p["sim_accuracy"]) for p in m_rho["points"]]
    # step 3: a rho whose SNN has SynOps > MACs; of those, the cheapest within 1 point of the most accurate (the
    # knee: a saturated curve's higher rho values only add SynOps the schedule then has to halve away)
    above = [p for p in m_rho["points"] if p["sim_synops"] > macs] or m_rho["points"]
    top = max(p["sim_accuracy"] for p in above)
    start = min((p for p in above if p["sim_accuracy"] >= top - 0.01), key=lambda p: p["sim_synops"])
    q_dir = work / args.qat_dir
    done = json.loads((q_dir / "metrics.json").read_text()) if (q_dir / "metrics.json").is_file() else {}
    start_rho = done.get("rho", args.start_rho)
    if start_rho is not None:
        start = next((p for p in m_rho["points"] if p["rho"] == start_rho), None)
        if start is None:
            raise SystemExit(f"rho = {start_rho:g} is not on the curve in {rho_dir}; add it to --rhos")
    m_q = (done if len(done.get("points", [])) == args.points or args.report_only and done else
           # else resume the schedule from its checkpoints
           run_conversion(ConvertConfig(out=str(q_dir), method="qrelu", rho=start["rho"], lr=args.qat_lr,
                                        target_synops=start["sim_synops"] * args.first_fraction,
                                        schedule_points=args.points, calibrate=not args.no_calibrate,
                                        halve_from=args.halve_from, relative_lr=args.relative_lr,
                                        target_control=args.target_control,
                                        temporal_qat=True if args.time_aware_qat else None,
                                        temporal_epochs=args.time_aware_epochs,
                                        temporal_samples=args.time_aware_samples, **common)))
    rho_best = max(a for _, a in curve)
    # the check counts accuracies both curves reach; above the whole rho curve the bound also credits the QAT's
    # extra training epochs (which lift an under-trained ANN) to the SynOp loss
    rows, best_ratio, best_bound = compare(m_q["points"], curve)
    within = [r for r in rows if r[2] >= ann_acc - 0.01]
    lowest = min(within, key=lambda r: r[1]) if within else None
    n_test = m_rho["points"][0].get("samples", args.eval_samples)
    n_done = len(m_q["points"])
    partial = "" if n_done == args.points else f" ({n_done} of {args.points} points finished when this was written)"
    ta_note = ""
    if args.time_aware_qat:
        ta_note = (f", the last {args.time_aware_epochs} epoch(s) of each point time-aware on count-coded input"
                   if args.time_aware_epochs else ", time-aware on count-coded input")
        if args.time_aware_samples:
            ta_note += f" of {args.time_aware_samples:,} of those images"
    n_ta = m_q["points"][0].get("qrelu_time_aware_samples") if m_q["points"] else None
    ta_on = f" on the first {n_ta:,} test images" if n_ta and n_ta < n_test else ""
    lines = [
        f"CIFAR-10, All-ConvNet with channel width x{args.width:g}{bn_note} ({macs:,} MACs; the paper's x1 net has "
        f"270,798,336 here), ANN trained {args.ann_epochs} epochs on {args.train_samples:,} images (random crop + "
        f"flip, Adam 1e-3, cosine{', bf16 autocast' if args.bf16_ann else ''}){ann_note}: test accuracy "
        f"{100 * ann_acc:.2f}%. "
        f"SNNs simulated T = {args.timesteps} steps, "
        f"count coding, biases {TIMING_NOTE.get(args.bias_timing, args.bias_timing)}"
        f"{f' (the rho curve: biases {TIMING_NOTE[rho_timing]})' if rho_timing != args.bias_timing else ''}"
        f", first {n_test:,} test images. "
        f"QAT: {args.qat_epochs} epoch(s) per point on "
        f"{args.qat_samples or args.train_samples:,} training images (lr {args.qat_lr:g}"
        f"{ta_note}; closed-loop target gain "
        f"{m_q.get('target_control', 0):g}), "
        f"starting from rho = {start['rho']:g} (SNN {100 * start['sim_accuracy']:.2f}% at {start['sim_synops']:,.0f} "
        f"SynOps), first target {args.first_fraction:g} x its SynOps, then halved {args.points - 1} times"
        f"{' (each time from the SynOps the previous point reached)' if args.halve_from == 'achieved' else ''}"
        f"{partial}{'; no calibration: every point as QAT left it' if args.no_calibrate else ''}"
        f"{'; each tensor learns at lr x its scale against the ANN (--relative-lr)' if args.relative_lr else ''}.",
        "",
        "First-layer scaling (rho) curve:",
        "",
        "| rho | SNN acc | SynOps | SynOps / MACs |",
        "|---|---|---|---|",
        *[f"| {p['rho']:g} | {100 * p['sim_accuracy']:.2f}% | {p['sim_synops']:,.0f} | "
          f"{p['sim_synops'] / macs:.3f} |" for p in m_rho["points"]],
        "",
        "QReLU + SynOp loss:",
        "",
        f"| target | calibration c | QReLU estimate acc{' (time-aware)' if args.time_aware_qat else ''}"
        f"{ta_on} | "
        "SNN SynOps | SynOps / MACs | SNN acc | rho curve needs for this acc | ratio |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {t:,.0f} | {c:.2f} | {100 * e:.2f}% | {s:,.0f} | {s / macs:.3f} | {100 * a:.2f}% | "
          f"{n:,.0f}{f' (at {100 * at:.2f}%)' if at < a else ''} | {'>= ' if at < a else ''}{r:.1f}x |"
          for t, s, a, at, n, r, e, c in rows],
        "",
        f"- The rho curve tops out at {100 * rho_best:.2f}%; points above it are compared at that accuracy, which "
        "they reach with at most their SynOps (ratio marked >="
        + (f"; best {best_bound:.1f}x). Such a bound also credits the QAT's extra training epochs to the SynOp loss, "
           "so the check below does not count it." if math.isfinite(best_bound) else ")."),
        (f"- SynOp-loss curve vs rho curve at accuracies both reach: best ratio {best_ratio:.1f}x "
         f"({'meets' if best_ratio >= 10 else 'does NOT meet'} the >= 10x of section 3.2.2).")
        if math.isfinite(best_ratio) else
        "- no SynOp-loss point lies at an accuracy the rho curve reaches: the >= 10x of section 3.2.2 is NOT shown.",
        (f"- lowest SynOps within 1 point of the ANN ({100 * ann_acc:.2f}%): {lowest[1]:,.0f} = "
         f"{lowest[1] / macs:.3f} x MACs at {100 * lowest[2]:.2f}% "
         f"({'meets' if lowest[1] <= 0.42 * macs else 'does NOT meet'} <= 0.42 x MACs)") if lowest else
        f"- no QReLU point stays within 1 point of the ANN ({100 * ann_acc:.2f}%): the <= 0.42 x MACs target is NOT met",
    ]
    if rho_timing != args.bias_timing:
        lines.append(f"- The two curves differ in bias timing (rho curve {rho_timing}, QAT {args.bias_timing}): these "
                     "ratios measure synopt's route against the baseline as published, not the SynOp loss alone.")
    if args.control_epochs:
        lines += ["", *control_lines(work, net, splits, overrides, common, m_q, macs, args)]
    if args.recheck_samples:
        lines += ["", f"Re-simulated on the first {args.recheck_samples:,} test images (binomial s.e. about "
                  f"{100 * math.sqrt(0.25 / args.recheck_samples):.1f} points):", "",
                  "| network | SNN acc | SynOps |", "|---|---|---|",
                  *recheck(work, net, m_q, q_dir, splits.test, args)]
    title = "Conversion: CIFAR-10 All-ConvNet, SynOp loss vs first-layer scaling"
    if args.time_aware_qat:
        title += " (time-aware QAT)"
    write_section(args.section, title, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
