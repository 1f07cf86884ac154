"""The ``synopt`` command line: a thin layer that wires the library's stages, run folders and progress."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

import synopt

Handler = Callable[[argparse.Namespace], int]


class UserError(Exception):
    """A mistake in the command line or the inputs: printed as one line, exit status 2."""


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x32x32' -> (3, 32, 32)."""
    try:
        shape = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} is not of the form CxHxW, e.g. 3x32x32") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be three positive sizes CxHxW, e.g. 1x28x28")
    return shape


def parse_floats(count: int | None = None) -> Callable[[str], tuple[float, ...]]:
    """'0.5,0.4,0.3' -> (0.5, 0.4, 0.3); with ``count`` the number of values is checked."""
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
        if count is not None and len(values) != count:
            raise argparse.ArgumentTypeError(f"{text!r} must have {count} comma-separated numbers")
        return values
    return parse


def _absolute(path: str | None) -> str | None:
    """A data root as an absolute path: the run folder records it, and `synopt simulate` may run elsewhere."""
    return str(Path(path).resolve()) if path else None


def _check_out(out: str) -> None:
    """--out must be a new or empty folder, or a synopt run folder (resumed if its configuration matches)."""
    from synopt.runs import check_out_folder

    check_out_folder(out)


# ---- count ------------------------------------------------------------------------------------------------------------


def _build_model(args: argparse.Namespace):
    from synopt import zoo

    overrides = {}
    if args.input is not None:
        overrides = {"in_channels": args.input[0], "input_size": args.input[1:]}
    if getattr(args, "num_classes", None):
        overrides["num_classes"] = args.num_classes
    model = zoo.build(args.model, **overrides)
    spec = zoo.get_spec(args.model)
    shape = args.input or (spec.in_channels, *spec.input_size)
    return model, tuple(shape)


def cmd_count(args: argparse.Namespace) -> int:
    from synopt import energy

    if bool(args.onnx) == bool(args.model):
        raise UserError("give exactly one of --model NAME or --onnx FILE")
    if args.checkpoint and not args.dataset:
        raise UserError("--checkpoint weights only enter the measured SynOps: give --dataset NAME too (the fan-out "
                        "and MACs do not depend on the weights)")
    if args.dataset and args.samples < 1:
        raise UserError(f"--samples must be >= 1, got {args.samples}")
    if args.onnx:
        from synopt.graph import import_onnx, prepare

        if args.checkpoint:
            raise UserError("--checkpoint is for zoo models; an ONNX file carries its own weights")
        if args.num_classes:
            raise UserError("--num-classes is for zoo models; an ONNX model's classes are in the file")
        imported = import_onnx(args.onnx, input_shape=args.input)
        model, _ = prepare(imported.module, maxpool="keep", fold_bn=False)
        shape = tuple(imported.input_shape)
    else:
        model, shape = _build_model(args)
    if args.checkpoint:
        from synopt.runs import load_checkpoint

        try:
            model.load_state_dict(load_checkpoint(args.checkpoint)["state_dict"])
        except RuntimeError as exc:
            raise UserError(f"checkpoint {args.checkpoint} does not fit {args.model!r} at input {shape}: "
                            f"{str(exc).splitlines()[0]} (--input / --num-classes set the shapes)") from None
    account = energy.analyze(model, shape, convention=args.convention)
    em = energy.get_energy_model(args.energy_model, args.e_ac, args.e_mac)
    measured = None
    if args.dataset:
        from synopt import data
        from synopt.finetune.ann import measure_synops

        test = data.load(args.dataset, args.data_root).test
        if tuple(test[0][0].shape) != tuple(shape):
            raise UserError(f"the model takes input {tuple(shape)} but dataset {args.dataset!r} gives "
                            f"{tuple(test[0][0].shape)}; give --input {'x'.join(map(str, test[0][0].shape))} or "
                            "another dataset")
        if not args.checkpoint and not args.onnx:
            print(f"note: no --checkpoint: the SynOps are measured on {args.model} with random weights",
                  file=sys.stderr)
        measured, _ = measure_synops(model, account, test, args.samples)
    print(account.table(em, measured))
    if args.json:
        from synopt.runs import write_json

        write_json(args.json, account.to_dict(em, measured))
        print(f"wrote {args.json}")
    return 0


# ---- zoo / data -------------------------------------------------------------------------------------------------------


def cmd_zoo(args: argparse.Namespace) -> int:
    from synopt import energy, zoo

    print(f"{'name':<18}{'input':<12}{'classes':>8}{'params':>13}{'MACs':>16}{'sites':>7}  source")
    for spec in zoo.list_models():
        model = zoo.build(spec.name)
        shape = (spec.in_channels, *spec.input_size)
        account = energy.analyze(model, shape)
        params = sum(p.numel() for p in model.parameters())
        print(f"{spec.name:<18}{'x'.join(map(str, shape)):<12}{spec.num_classes:>8}{params:>13,}"
              f"{account.macs:>16,}{len(account.layers):>7}  {spec.source}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from synopt import data

    for name, desc in data.list_datasets().items():
        print(f"{name:<16}{desc}")
    return 0


# ---- train (ANN) -----------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from synopt.finetune.ann import train_ann

    _check_out(args.out)
    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    if args.train_samples is not None and args.train_samples < 1:
        raise UserError(f"--train-samples must be >= 1, got {args.train_samples}")
    result = train_ann(model=args.model, dataset=args.dataset, data_root=_absolute(args.data_root), out=args.out,
                       epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                       seed=args.seed, progress=not args.quiet, train_samples=args.train_samples)
    print(result["summary"])
    return 0


# ---- convert / simulate -----------------------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    from synopt.convert.pipeline import ConvertConfig, run_conversion
    from synopt.convert.source import ModelSource

    if args.onnx:
        if Path(args.onnx).is_dir():
            raise UserError(f"--onnx {args.onnx} is a folder; give the .onnx file")
        if not Path(args.onnx).is_file():
            raise UserError(f"ONNX file {args.onnx} does not exist")
        if args.checkpoint:
            raise UserError("--checkpoint is for --model/--torchvision; an ONNX file carries its own weights")
        if args.num_classes:
            raise UserError("--num-classes is for --torchvision; an ONNX model's classes are in the file")
        overrides = {"input_shape": list(args.input)} if args.input else {}
        source = ModelSource("onnx", onnx=args.onnx, onnx_output=args.onnx_output, overrides=overrides)
    elif args.torchvision:
        overrides = {"input_shape": list(args.input)} if args.input else {}
        if args.num_classes:
            overrides["num_classes"] = args.num_classes
        source = ModelSource("torchvision", name=args.torchvision, checkpoint=args.checkpoint, overrides=overrides)
    else:
        overrides = {"in_channels": args.input[0], "input_size": list(args.input[1:])} if args.input else {}
        source = ModelSource("zoo", name=args.model, checkpoint=args.checkpoint, overrides=overrides)
    _check_out(args.out)
    convention = {}
    if args.input_range:
        lo, hi = args.input_range
        if not lo < hi:
            raise UserError(f"--input-range {lo:g},{hi:g}: give LO,HI with LO < HI, e.g. 0,255")
        convention["input_range"] = args.input_range
    if args.mean:
        convention["mean"] = args.mean
    if args.std:
        convention["std"] = args.std
    if args.grayscale_to_rgb:
        convention["grayscale_to_rgb"] = True
    frames = {}
    if args.event_count:
        frames = {"event_count": args.event_count}
    cfg = ConvertConfig(source=source, dataset=args.dataset, out=args.out, data_root=_absolute(args.data_root),
                        method=args.method, target_synops=args.target_synops, target_fraction=args.target_fraction,
                        schedule_points=args.schedule, halve_from=args.halve_from,
                        timesteps=args.timesteps, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                        batch_size=args.batch_size, rho=args.rho, calibrate=not args.no_calibrate,
                        relative_lr=args.relative_lr,
                        target_control=args.target_control, eval_samples=args.samples, init_v_fraction=args.init_v,
                        min_v_mem=args.min_v_mem, temporal_qat=True if args.time_aware_qat else None,
                        temporal_epochs=args.time_aware_epochs, temporal_samples=args.time_aware_samples,
                        single_spike=args.single_spike, bias_timing=args.bias_timing, percentile=args.percentile,
                        frames=frames, seed=args.seed,
                        train_epochs=args.train_epochs, progress=not args.quiet,
                        event_augment=None if args.event_augment == "none" else args.event_augment,
                        maxpool="keep" if args.keep_maxpool else "avg", bias="remove" if args.remove_bias else "keep",
                        recalibrate_bn=args.recalibrate_bn, input_convention=convention or None)
    if args.train_epochs and (args.onnx or args.checkpoint or args.torchvision):
        raise UserError("--train-epochs trains a zoo model from scratch; it cannot be combined with --onnx, "
                        "--torchvision or --checkpoint")
    metrics = run_conversion(cfg)
    print((Path(args.out) / "summary.md").read_text())
    print(f"run folder: {args.out}")
    return 0 if metrics else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from synopt.simulate.reload import simulate_run

    if args.json and Path(args.json).is_dir():
        raise UserError(f"--json {args.json} is a folder; give a file name, e.g. {Path(args.json) / 'sim.json'}")
    snn = Path(args.snn)
    if not (snn / "spec.json").exists() and (snn / "snn" / "spec.json").exists():
        snn = snn / "snn"  # the run folder itself
    result = simulate_run(snn, timesteps=args.timesteps, data_root=args.data_root, samples=args.samples,
                          encoding=args.encoding, bias_timing=args.bias_timing, progress=not args.quiet)
    print(f"accuracy after {result.timesteps} steps: {100 * result.accuracy:.2f}% on {result.samples} samples; "
          f"SynOps/inference {result.synops:,.0f} (+{result.input_synops:,.0f} from input events)")
    print("accuracy per step: " + " ".join(f"{100 * a:.1f}" for a in result.accuracy_per_step))
    if args.json:
        from synopt.runs import write_json

        write_json(args.json, result.to_dict())
    return 0


# ---- finetune --direct (single-step SNN with the synaptic interaction penalty) ----------------------------------------


def _baseline_joules(text: str | None) -> float | None:
    """--baseline: E_SNN of the baseline in joules, or a direct run folder (its metrics.json e_snn_j)."""
    if text is None:
        return None
    path = Path(text)
    if path.is_dir() or path.suffix == ".json":
        metrics = path / "metrics.json" if path.is_dir() else path
        if not metrics.is_file():
            raise UserError(f"--baseline {text}: no metrics.json there (give a direct run folder or joules)")
        value = json.loads(metrics.read_text()).get("e_snn_j")
        if not value:
            raise UserError(f"--baseline {text}: {metrics} has no e_snn_j (not a direct run?)")
        return float(value)
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--baseline {text!r} is neither a run folder nor a number of joules") from None
    if not value > 0:
        raise UserError(f"--baseline must be positive joules per inference, got {text}")
    return value


def cmd_finetune(args: argparse.Namespace) -> int:
    if not args.direct:
        raise UserError("only --direct (single-step SNN training) is implemented here; the conversion route's "
                        "fine-tuning is `synopt convert`")
    if not math.isfinite(args.lambda_norm) or args.lambda_norm < 0:
        raise UserError(f"--lambda-norm must be a finite number >= 0, got {args.lambda_norm}")
    if args.penalty == "none" and args.lambda_norm:
        raise UserError("--penalty none trains without a penalty; drop --lambda-norm (or choose a penalty)")
    for flag, value in (("--threads", args.threads), ("--train-samples", args.train_samples),
                        ("--samples", args.samples)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.from_ann and Path(args.from_ann).is_dir():
        hint = " (e.g. its model.pt)" if (Path(args.from_ann) / "model.pt").is_file() else ""
        raise UserError(f"--from-ann {args.from_ann} is a folder; give the checkpoint file{hint}")
    if args.p < 1:
        raise UserError(f"--p must be >= 1 (Definition 3.3 of Suetake et al.), got {args.p}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    if args.weight_decay is not None and args.weight_decay < 0:
        raise UserError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.bn_decay and args.weight_decay == 0:
        raise UserError("--bn-decay applies the weight decay to batch norm too; give a positive --weight-decay")
    if args.from_ann and not Path(args.from_ann).is_file():
        raise UserError(f"--from-ann checkpoint {args.from_ann} does not exist")
    if args.init_rate is not None and not args.from_ann:
        raise UserError("--init-rate re-scales a network started from an ANN; give --from-ann too")
    if args.init_rate is not None and not 0 < args.init_rate < 1:
        raise UserError(f"--init-rate must be in (0, 1), got {args.init_rate}")
    from synopt.finetune.direct import train_direct

    _check_out(args.out)
    result = train_direct(args.model, args.dataset, out=args.out, data_root=_absolute(args.data_root),
                          surrogate=args.surrogate, penalty=args.penalty, p=args.p, lambda_norm=args.lambda_norm,
                          schedule=args.schedule, weight_decay=args.weight_decay, bn_decay=args.bn_decay,
                          epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, batch_size=args.batch_size,
                          label_smoothing=args.label_smoothing, seed=args.seed, from_ann=args.from_ann,
                          init_rate=args.init_rate, alpha=args.alpha, tau=args.tau,
                          train_samples=args.train_samples, eval_samples=args.samples,
                          baseline_j=_baseline_joules(args.baseline), energy_model=args.energy_model,
                          progress=not args.quiet, threads=args.threads)
    print(result["summary"])
    return 0


# ---- sweep / report ---------------------------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    from synopt.compare.study import expand, load_study
    from synopt.compare.sweep import sweep

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.dry_run:
        plan = expand(load_study(args.study, args.data_root))
        for spec in plan:
            print(f"{spec.run_id:48s} {spec.kind:10s} " + " ".join(
                f"{k}={v}" for k, v in spec.params.items() if k not in ("model", "dataset", "data_root")
                and v is not None) + (f" needs={spec.needs}" if spec.needs else ""))
        print(f"{len(plan)} runs")
        return 0
    result = sweep(args.study, out=args.out, workers=args.workers, ray_address=args.ray_address,
                   data_root=args.data_root, retry_failed=not args.no_retry, progress=not args.quiet)
    print(f"{len(result.ran)} runs done, {len(result.skipped)} already finished, {len(result.failed)} failed"
          + (f" ({', '.join(result.failed)}: see runs/<id>/error.txt)" if result.failed else ""))
    print(f"results: {result.path / 'results.csv'}; report: synopt report {result.path} -o report.html")
    if args.report:
        from synopt.compare.report import write_report

        html = write_report(result.path, result.path / "report.html", result.path / "report.md")
        print(f"report: {html}")
    return 1 if result.failed else 0  # a partly failed sweep is not a success (the finished runs are kept)


def cmd_report(args: argparse.Namespace) -> int:
    from synopt.compare.report import write_report

    src = Path(args.src)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; give a sweep folder (with results.json) or a run folder")
    html = Path(args.output) if args.output else src / "report.html"
    if html.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"-o {html}: the report is HTML; give a name ending in .html")
    md = Path(args.markdown) if args.markdown else html.with_suffix(".md")
    write_report(src, html, md)
    print(f"report: {html} (Markdown: {md})")
    return 0


# ---- parser -----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from synopt.convert.bias_timing import BIAS_TIMINGS

    p = argparse.ArgumentParser(
        prog="synopt",
        description="Turn trained ANNs into energy-efficient spiking networks and count every synaptic operation.",
    )
    p.add_argument("--version", action="version", version=f"synopt {synopt.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("count", help="per-layer neurons, fan-out, MACs, SynOps and energy of a model",
                       description="Print the exact SynOp accounting of a zoo model (per activation site: neurons, "
                                   "fan-out psi, synapses; totals: MACs, Omega_*(1), energy).")
    c.add_argument("--model", help="zoo model name (see `synopt zoo list`)")
    c.add_argument("--onnx", help="count an ONNX model instead (imported and checked against onnxruntime)")
    c.add_argument("--input", type=parse_shape, help="input shape CxHxW (default: the model's own)")
    c.add_argument("--num-classes", type=int, help="number of classes (default: the model's own)")
    c.add_argument("--checkpoint", help="weights (state_dict) to load, for --dataset measurements")
    c.add_argument("--convention", choices=("exact", "eq7"), default="exact",
                   help="exact per-neuron fan-out (default) or the layer average of Eq. 7 of Suetake et al.")
    c.add_argument("--dataset", help="also measure ANN-estimated SynOps on this dataset's test split")
    c.add_argument("--data-root", help="data root (or set SYNOPT_DATA_ROOT)")
    c.add_argument("--samples", type=int, default=1000, help="test samples for --dataset (default 1000)")
    c.add_argument("--energy-model", default="cmos45nm", help="named energy model (default cmos45nm)")
    c.add_argument("--e-ac", type=float, help="your chip's energy per SynOp in pJ (overrides --energy-model)")
    c.add_argument("--e-mac", type=float, help="energy per MAC in pJ for the ANN comparison")
    c.add_argument("--json", help="also write the table as JSON to this file")
    c.set_defaults(func=cmd_count)

    z = sub.add_parser("zoo", help="the architectures synopt knows", description="Model zoo commands.")
    zsub = z.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    zl = zsub.add_parser("list", help="names, inputs, parameters and MACs of every zoo model")
    zl.set_defaults(func=cmd_zoo)

    d = sub.add_parser("data", help="the datasets synopt reads", description="Dataset commands.")
    dsub = d.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    dl = dsub.add_parser("list", help="names and descriptions of the dataset registry")
    dl.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train a zoo ANN (ReLU) and report its accuracy and SynOp estimate",
                       description="Train a ReLU ANN from the zoo; writes a run folder with config, checkpoint, "
                                   "metrics and the per-layer SynOp table.")
    t.add_argument("--model", default="digitsnet")
    t.add_argument("--dataset", default="digits")
    t.add_argument("--data-root", help="data root (or set SYNOPT_DATA_ROOT); not needed for digits")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-samples", type=int, help="train on a seeded random subset of this size (quick runs)")
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)
    cv = sub.add_parser("convert", help="ANN -> SNN by QReLU fine-tuning with a SynOp target (Sorbaro et al. 2020)",
                        description="Import a trained model, prepare it, fine-tune it with QReLU and the SynOp loss "
                                    "(or scale it), convert it to sinabs IF neurons, simulate and write a run folder.")
    src = cv.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", help="trained model as an ONNX file")
    src.add_argument("--model", help="zoo model name (with --checkpoint for trained weights)")
    src.add_argument("--torchvision", metavar="NAME", help="a torchvision architecture (e.g. resnet18) with "
                                                          "--checkpoint; --input and --num-classes set its shape")
    cv.add_argument("--checkpoint", help="state_dict of the zoo model (torch.save; loaded weights-only)")
    cv.add_argument("--train-epochs", type=int, default=0,
                    help="train the zoo model from scratch for this many epochs first (no checkpoint needed)")
    cv.add_argument("--onnx-output", help="graph output to use when the ONNX model has several (name or index)")
    cv.add_argument("--input", type=parse_shape, help="model input CxHxW (default: the zoo model's own, or the "
                                                       "ONNX file's; needed when the file leaves H and W open)")
    cv.add_argument("--num-classes", type=int, help="classes of a --torchvision model")
    cv.add_argument("--input-range", type=parse_floats(2), metavar="LO,HI",
                    help="the value range the model expects, e.g. 0,255 or -1,1 (synopt feeds 0..1; folded in)")
    cv.add_argument("--mean", type=parse_floats(), help="per-channel mean the model subtracts, e.g. 0.485,0.456,0.406")
    cv.add_argument("--std", type=parse_floats(), help="per-channel std the model divides by")
    cv.add_argument("--grayscale-to-rgb", action="store_true",
                    help="the dataset is grayscale but the model expects 3 channels (folded into the first layer)")
    cv.add_argument("--keep-maxpool", action="store_true",
                    help="keep max pooling on spikes (default: replaced by average pooling, which converts better)")
    cv.add_argument("--remove-bias", action="store_true", help="drop biases (default: constant input currents)")
    cv.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                    help="re-estimate BatchNorm statistics on N training images with dropout off before folding them "
                         "(fixes the variance shift of dropout in front of BN; default 0: as trained)")
    cv.add_argument("--dataset", default="digits", help="dataset name (see `synopt data list`; default digits)")
    cv.add_argument("--data-root", help="data root (or set SYNOPT_DATA_ROOT)")
    cv.add_argument("--method", choices=("qrelu", "scale", "rho"), default="qrelu",
                    help="qrelu: QAT with the SynOp loss (default); scale: robust percentile scaling; rho: "
                         "first-layer scaling sweep")
    cv.add_argument("--target-synops", type=float, help="SynOp budget per inference S0 (method qrelu)")
    cv.add_argument("--target-fraction", type=float,
                    help="instead of --target-synops: S0 = this fraction of the QReLU network's SynOps at rho "
                         "(0.5 = the paper's halving step)")
    cv.add_argument("--schedule", type=int, default=1, help="halve the target this many times, each model starting "
                                                           "from the previous one (default 1: one target)")
    cv.add_argument("--halve-from", choices=("target", "achieved"), default="target",
                    help="with --schedule: halve the previous target (default) or the SynOps the previous point "
                         "reached on the validation data (003_* step 3a; differs from the target with --no-calibrate)")
    cv.add_argument("--timesteps", "-T", type=int, default=10, help="simulation time steps (default 10)")
    cv.add_argument("--epochs", type=int, default=5, help="QAT epochs per target (default 5; 0: no fine-tuning, "
                                                          "only calibration onto the target)")
    cv.add_argument("--lr", type=float, default=1e-3, help="QAT learning rate (Adam, cosine; default 1e-3)")
    cv.add_argument("--weight-decay", type=float, default=0.0)
    cv.add_argument("--batch-size", type=int, default=64)
    cv.add_argument("--rho", type=float, help="first-layer scale (default: chosen automatically; with --method rho "
                                              "the sweep is 0.5,1,2,...,32 unless one value is given)")
    cv.add_argument("--relative-lr", action="store_true",
                    help="QAT: every tensor's learning rate times its scale against the ANN, so the rho-scaled "
                         "first layer learns at the ANN's relative pace (Adam's step is absolute)")
    cv.add_argument("--no-calibrate", action="store_true", help="do not calibrate the SynOps onto the target")
    cv.add_argument("--time-aware-qat", action="store_true",
                    help="static images: QAT on count-coded input over T steps, so the loss sees the IF counts of the "
                         "simulated SNN (T x slower QAT; on by default for event data)")
    cv.add_argument("--time-aware-epochs", type=int, metavar="N",
                    help="time-aware QAT only in the last N epochs of each point; the first ones train the static "
                         "QReLU network, T x cheaper (default: every epoch)")
    cv.add_argument("--time-aware-samples", type=int, metavar="N",
                    help="train the time-aware epochs on a fixed random subset of N training samples (each costs T "
                         "static ones; default: the whole training split)")
    cv.add_argument("--target-control", type=float, metavar="GAIN",
                    help="closed-loop QAT target: once the SynOps settle, lower the loss's S0 by (target/S)^GAIN per "
                         "epoch so the trained net lands on the target (default: 0.5 on event data, 0 = Eq. 2 as "
                         "published on static images)")
    cv.add_argument("--samples", type=int, help="test samples to simulate (default: all)")
    cv.add_argument("--init-v", type=float, default=0.0, help="initial membrane in units of the threshold (0.5: θ/2)")
    cv.add_argument("--min-v-mem", type=float, help="lower bound of the membrane in units of the threshold, e.g. -1")
    cv.add_argument("--single-spike", action="store_true", help="at most one spike per neuron and step")
    cv.add_argument("--bias-timing", choices=BIAS_TIMINGS, default="spread",
                    help="when biases enter the IF neurons over T steps: spread (b/T per step, as published), "
                         "negative-first (negative biases as the initial membrane; DynapCNN/Speck can run it) or "
                         "signed (negative at the first step, positive at the last; closest to the QReLU net; "
                         "docs/conversion.md)")
    cv.add_argument("--percentile", type=float, default=99.9, help="percentile for --method scale")
    cv.add_argument("--event-count", type=int, help="event data: frames of this many events (default: T time bins)")
    cv.add_argument("--event-augment", choices=("prefix", "shift", "prefix+shift", "none"), default="prefix",
                    help="event data: training augmentation (prefix: the ANN trains on the first k of 30 time bins; "
                         "shift: random moves of up to 2 pixels, also in time-aware QAT; default prefix)")
    cv.add_argument("--seed", type=int, default=0)
    cv.add_argument("--out", required=True, help="run folder to write")
    cv.add_argument("--quiet", action="store_true", help="no progress bars")
    cv.set_defaults(func=cmd_convert)

    ft = sub.add_parser("finetune", help="train a single-step SNN directly with the synaptic interaction penalty",
                        description="Direct route (--direct): train a zoo architecture with single-step spiking "
                                    "neurons (S2NN) and the penalty lambda' * Omega_*/Omega_*(1) of Suetake et al., "
                                    "from scratch or from a ReLU ANN checkpoint; measure accuracy, E_SNN, dead "
                                    "neurons and firing rates; fold BN into thresholds and export a T=1 sinabs "
                                    "network. Unset hyperparameters follow Table 6 of the paper.")
    ft.add_argument("--direct", action="store_true", help="direct single-step SNN training (required)")
    ft.add_argument("--model", default="digitsnet", help="zoo model name (default digitsnet)")
    ft.add_argument("--dataset", default="digits", help="dataset name (default digits)")
    ft.add_argument("--data-root", help="data root (or set SYNOPT_DATA_ROOT); not needed for digits")
    ft.add_argument("--from-ann", metavar="CKPT", help="start from this ReLU ANN checkpoint of the same model")
    ft.add_argument("--init-rate", type=float,
                    help="with --from-ann: re-scale each BN so this fraction of neurons starts above threshold")
    from synopt.finetune.neuron import SURROGATES
    from synopt.finetune.penalty import PENALTY_KINDS

    ft.add_argument("--surrogate", choices=tuple(SURROGATES), default="s2nn", help="surrogate gradient (default s2nn)")
    ft.add_argument("--alpha", type=float, help="alpha of the s2nn/sigmoid surrogate (default: Table 6)")
    ft.add_argument("--tau", type=float, help="tau of the s2nn surrogate (default: Table 6)")
    ft.add_argument("--penalty", choices=PENALTY_KINDS + ("none",), default="syn",
                    help="Omega_syn (default), Omega_total, Omega_balance or none")
    ft.add_argument("--p", type=float, default=1.0, help="exponent p of the penalty (default 1)")
    ft.add_argument("--lambda-norm", type=float, default=0.0,
                    help="normalised intensity lambda' (multiplies Omega_*/Omega_*(1); paper: 1 ... 8192)")
    ft.add_argument("--schedule", choices=("linear", "constant"), default="linear",
                    help="lambda schedule over epochs (default linear: lambda * epoch/epochs)")
    ft.add_argument("--weight-decay", type=float, help="lambda_WD on conv/linear weights (default: Table 6)")
    ft.add_argument("--bn-decay", action="store_true", help="also decay batch-norm parameters (B_BN = 1)")
    ft.add_argument("--epochs", type=int, help="epochs (default: 150 for the paper's models, 20 otherwise)")
    ft.add_argument("--lr", type=float, help="learning rate, cosine-annealed (default: Table 6)")
    ft.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="adam or momentum SGD")
    ft.add_argument("--batch-size", type=int, help="mini-batch size (default 100 for the paper's models)")
    ft.add_argument("--label-smoothing", type=float, default=0.0)
    ft.add_argument("--train-samples", type=int, help="train on a random subset of this size (quick CPU runs)")
    ft.add_argument("--samples", type=int, help="test samples to measure (default: all)")
    ft.add_argument("--baseline", help="E_SNN of the baseline: a direct run folder or joules per inference")
    ft.add_argument("--energy-model", default="cmos45nm", help="named energy model (default cmos45nm)")
    ft.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--out", required=True, help="run folder to write (re-run to resume)")
    ft.add_argument("--quiet", action="store_true", help="no progress bars")
    ft.set_defaults(func=cmd_finetune)

    sm = sub.add_parser("simulate", help="simulate a converted network from a run folder",
                        description="Reload RUN_DIR/snn and simulate it for T steps in sinabs.")
    sm.add_argument("snn", help="the snn folder of a convert run (RUN_DIR/snn, or RUN_DIR)")
    sm.add_argument("--timesteps", "-T", type=int, default=10)
    sm.add_argument("--data-root", help="data root (default: the one the run used)")
    sm.add_argument("--samples", type=int, help="test samples (default: all)")
    sm.add_argument("--encoding", choices=("count", "rate", "poisson"), help="override the recorded encoding")
    sm.add_argument("--bias-timing", choices=BIAS_TIMINGS, help="override the recorded bias timing")
    sm.add_argument("--json", help="write the measurements to this file")
    sm.add_argument("--quiet", action="store_true")
    sm.set_defaults(func=cmd_simulate)

    sw = sub.add_parser("sweep", help="run a study: both routes over a grid of targets, penalties, λ' and seeds",
                        description="Run (or resume) every run of a study file (.toml/.yaml) as a run folder under "
                                    "OUT/runs; write OUT/results.csv and results.json (docs/sweeps.md).")
    sw.add_argument("study", help="study file (.toml, .yaml or .json)")
    sw.add_argument("--out", help="sweep folder (default runs/sweeps/<study name>); re-run to resume")
    sw.add_argument("--workers", type=int, help="parallel runs on this machine (default: the study's, else cores)")
    sw.add_argument("--ray-address", help="run on Ray: auto, HOST:PORT, or local (a private instance here)")
    sw.add_argument("--data-root", help="data root (overrides the study's)")
    sw.add_argument("--no-retry", action="store_true", help="keep failed runs failed when resuming")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    sw.add_argument("--report", action="store_true", help="write OUT/report.html and report.md at the end")
    sw.add_argument("--quiet", action="store_true")
    sw.set_defaults(func=cmd_sweep)
    sw.epilog = "exit status: 0 when every run finished, 1 when any run failed (see runs/<id>/error.txt), 2 on errors"

    rp = sub.add_parser("report", help="a self-contained HTML (and Markdown) report of a sweep or a run",
                        description="Tables, curve scores, plots and a verdict from a sweep folder or a run folder.")
    rp.add_argument("src", help="sweep folder (results.json) or run folder (metrics.json)")
    rp.add_argument("-o", "--output", help="HTML file (default SRC/report.html)")
    rp.add_argument("--markdown", help="Markdown file (default: next to the HTML, .md)")
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        sub = {"zoo": "zoo list", "data": "data list"}.get(args.command or "", None)
        parser.print_help() if sub is None else print(f"usage: synopt {sub}")
        return 2 if args.command else 0
    shown = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("synopt: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user-facing errors are one line; bugs keep their traceback
        if _is_user_error(exc):
            print(f"synopt: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        warnings.formatwarning = shown


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: one line each, without the source line that raised them."""
    return f"synopt: warning: {message}\n"


def _is_user_error(exc: Exception) -> bool:
    from synopt.energy import AccountingError

    user_types: tuple[type, ...] = (UserError, AccountingError, FileNotFoundError, FileExistsError, ValueError)
    try:
        from synopt.data import DatasetError

        user_types += (DatasetError,)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, user_types)


if __name__ == "__main__":
    sys.exit(main())
