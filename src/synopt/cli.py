"""The ``synopt`` command line: a thin layer that wires the library's stages, run folders and progress."""

from __future__ import annotations

import argparse
import json
import sys
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

    model, shape = _build_model(args)
    if args.checkpoint:
        from synopt.runs import load_checkpoint

        model.load_state_dict(load_checkpoint(args.checkpoint)["state_dict"])
    account = energy.analyze(model, shape, convention=args.convention)
    em = energy.get_energy_model(args.energy_model, args.e_ac, args.e_mac)
    measured = None
    if args.dataset:
        measured = _measure_activity(model, account, args)
    print(account.table(em, measured))
    if args.json:
        from synopt.runs import write_json

        write_json(args.json, account.to_dict(em, measured))
        print(f"wrote {args.json}")
    return 0


def _measure_activity(model, account, args) -> dict[str, float]:
    """ANN-estimated SynOps per inference: psi-weighted activations on ``--samples`` test images."""
    import torch

    from synopt import data, energy
    from synopt.finetune.train import loader

    splits = data.load(args.dataset, args.data_root)
    model.eval()
    totals: dict[str, float] = {}
    seen = 0
    with torch.no_grad(), energy.ActivityRecorder(model, account, detach=True) as rec:
        for x, _ in loader(splits.test, 256, shuffle=False):
            x = x[: args.samples - seen]
            rec.activity = {}
            model(x)
            for name, value in rec.synops_per_layer(1).items():
                totals[name] = totals.get(name, 0.0) + value
            seen += len(x)
            if seen >= args.samples:
                break
    return {k: v / seen for k, v in totals.items()}


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

    result = train_ann(model=args.model, dataset=args.dataset, data_root=args.data_root, out=args.out,
                       epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                       seed=args.seed, progress=not args.quiet)
    print(result["summary"])
    return 0


# ---- parser -----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="synopt",
        description="Turn trained ANNs into energy-efficient spiking networks and count every synaptic operation.",
    )
    p.add_argument("--version", action="version", version=f"synopt {synopt.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("count", help="per-layer neurons, fan-out, MACs, SynOps and energy of a model",
                       description="Print the exact SynOp accounting of a zoo model (per activation site: neurons, "
                                   "fan-out psi, synapses; totals: MACs, Omega_*(1), energy).")
    c.add_argument("--model", required=True, help="zoo model name (see `synopt zoo list`)")
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
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        sub = {"zoo": "zoo list", "data": "data list"}.get(args.command or "", None)
        parser.print_help() if sub is None else print(f"usage: synopt {sub}")
        return 2 if args.command else 0
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
