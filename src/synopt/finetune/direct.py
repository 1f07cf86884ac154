"""The direct route: train single-step SNNs with the synaptic interaction penalty, measure them, fold and export.

* :func:`train_direct` — from scratch or from a trained ReLU ANN of the same zoo architecture; objective Eq. 22 of
  000_* (CE + λ Ω_*/Ω_*(1) + weight decay in two optimizer groups), cosine annealing, λ linearly scheduled; a run
  folder like ``synopt convert`` writes (docs/direct.md).
* :func:`measure` / :func:`direct_metrics` — the metrics of Table 2 of 000_* (accuracy, E_SNN, E_SNN/E_baseline,
  dead-neuron rate, R, R(l), E_SNN(l)) and E_Full/E_Method of App. B of 004_*, all through :mod:`synopt.energy`.
* :func:`fold_thresholds` — batch norm folded into per-neuron thresholds (Eq. 27 of 004_*, both signs of γ and
  γ = 0), giving conv/linear layers + :class:`~synopt.finetune.neuron.ThresholdNeuron` only.
* :func:`export_sinabs` — the folded network as a T = 1 sinabs network that ``synopt.simulate.simulate`` measures
  with the same simulator and accounting as converted networks; :func:`save_snn` / :func:`load_snn` its folder.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from synopt import energy, zoo
from synopt.finetune.neuron import SURROGATES, neuron_factory
from synopt.finetune.penalty import PENALTY_KINDS, SCHEDULES, Penalty, SpikeRecorder, weight_decay_groups
from synopt.finetune.fold import FoldResult, export_sinabs, fold_thresholds, load_folded, load_snn, save_snn
from synopt.finetune.metrics import Measurement, direct_metrics, measure
from synopt.finetune.bn_stats import BN_TYPES
from synopt.finetune.sites import site_links
from synopt.finetune.train import TrainConfig, fit, loader, seeded_subset
from synopt.runs import RunDir, cleans_up_early_failures, load_checkpoint, save_checkpoint, write_text

__all__ = [
    "PRESETS",
    "preset",
    "build_snn",
    "init_from_ann",
    "Measurement",
    "measure",
    "direct_metrics",
    "FoldResult",
    "fold_thresholds",
    "export_sinabs",
    "save_snn",
    "load_folded",
    "load_snn",
    "train_direct",
]


# ---------------------------------------------------------------------------------------------------------------------
# Presets: Table 6 of 000_* (+ App. A.3: batch 100, 150 epochs, cosine annealing)
# ---------------------------------------------------------------------------------------------------------------------

# (model, optimizer) -> lr, λ_WD, α, τ of the Eq. 3 (= s2nn) rows; (model, optimizer, surrogate) for the other rows.
PRESETS: dict[tuple, dict[str, float]] = {
    ("cnn7", "adam"): {"lr": 1e-3, "weight_decay": 1e-4, "alpha": 0.25, "tau": 0.6},
    ("cnn7", "adam", "pwl"): {"lr": 1e-3, "weight_decay": 1e-6},
    ("cnn7", "adam", "sigmoid"): {"lr": 1e-2, "weight_decay": 1e-7, "alpha": 0.45},
    ("cnn7", "sgd"): {"lr": 1e-2, "weight_decay": 1e-4, "alpha": 0.35, "tau": 0.6},
    ("vgg11", "adam"): {"lr": 1e-3, "weight_decay": 1e-3, "alpha": 0.25, "tau": 0.6},
    ("vgg11", "sgd"): {"lr": 1e-2, "weight_decay": 1e-3, "alpha": 0.35, "tau": 0.8},
    ("resnet18", "adam"): {"lr": 1e-3, "weight_decay": 1e-4, "alpha": 0.35, "tau": 1.0},
    ("resnet18", "sgd"): {"lr": 1e-2, "weight_decay": 1e-3, "alpha": 0.35, "tau": 1.0},
}
PAPER_EPOCHS, PAPER_BATCH = 150, 100  # App. A.3 of 000_*
_FALLBACK = {"adam": {"lr": 1e-3, "weight_decay": 0.0}, "sgd": {"lr": 1e-2, "weight_decay": 0.0}}


def preset(model: str, optimizer: str = "adam", surrogate: str = "s2nn") -> dict[str, Any]:
    """Hyperparameters for ``model``: Table 6 of 000_* where it has a row, else lr 1e-3 (Adam) / 1e-2 (SGD), no decay.

    Returns lr, weight_decay (λ_WD), bn_decay (B_BN = 0 throughout Table 6), epochs, batch_size, the surrogate's
    hyperparameters (α, τ only for the surrogates that have them) and ``source`` (which row).
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}; choose adam or sgd")
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")
    key = model.strip().lower()
    row = PRESETS.get((key, optimizer, surrogate)) or PRESETS.get((key, optimizer))
    paper = row is not None
    row = dict(row or _FALLBACK[optimizer])
    base = PRESETS.get((key, optimizer), {})
    hyper = {k: row.get(k, base.get(k)) for k in SURROGATES[surrogate].defaults if k in ("alpha", "tau")}
    hyper = {k: v for k, v in hyper.items() if v is not None}
    source = (f"000_* Table 6 ({key}, {optimizer}"
              f"{', ' + surrogate if (key, optimizer, surrogate) in PRESETS else ''})" if paper
              else "synopt default (no Table 6 row)")
    return {"lr": row["lr"], "weight_decay": row["weight_decay"], "bn_decay": False,
            "epochs": PAPER_EPOCHS if paper else 20, "batch_size": PAPER_BATCH if paper else 64,
            "hyper": hyper, "source": source}


def build_snn(model: str, input_shape, num_classes: int, surrogate: str = "s2nn", **hyper) -> nn.Module:
    """The zoo architecture ``model`` with a :class:`SingleStepNeuron` at every activation site."""
    c, h, w = input_shape
    return zoo.build(model, in_channels=c, input_size=(h, w), num_classes=num_classes,
                     act=neuron_factory(surrogate, **hyper))


# ---------------------------------------------------------------------------------------------------------------------
# Starting from a ReLU ANN
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _recompute_bn_stats(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Running mean/var of every BN re-estimated (cumulative average) on ``batches``; dropout stays off."""
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES)]
    model.eval()
    saved = []
    for bn in bns:
        saved.append(bn.momentum)
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for x in batches:
        model(x)
    for bn, mom in zip(bns, saved):
        bn.momentum = mom
        bn.eval()


def init_from_ann(snn: nn.Module, state_dict: dict, calib: list[torch.Tensor] | None = None,
                  init_rate: float | None = None) -> dict:
    """Copy a trained ReLU ANN's weights into ``snn`` (same architecture); optionally re-scale its activity.

    With ``init_rate`` (e.g. 0.15) every site in turn, from the input on: the BN running statistics are re-estimated
    on ``calib`` for the spiking network, the (1 - r) quantile q of the membrane u feeding the site is measured, and
    the preceding BN's γ and β are multiplied by u_th/q so that a fraction r of the neurons is at or above u_th (if
    q <= 0, β is shifted by u_th - q instead).  Sites without a BN right before them are left as they are.
    Returns what was done per site.
    """
    try:
        snn.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(f"the ANN checkpoint does not fit this architecture: {str(exc).splitlines()[0]}") from exc
    report: dict[str, Any] = {"init_rate": init_rate, "sites": {}}
    if init_rate is None:
        return report
    if not 0 < init_rate < 1:
        raise ValueError(f"init_rate must be in (0, 1), got {init_rate}")
    if not calib:
        raise ValueError("init_rate needs calibration batches")
    modules = dict(snn.named_modules())
    for link in site_links(snn):
        _recompute_bn_stats(snn, calib)
        neuron = modules[link.site]
        if link.bn is None or not modules[link.bn].affine:
            report["sites"][link.site] = {"action": "none (no affine BN right before the site)"}
            continue
        seen: list[torch.Tensor] = []
        handle = neuron.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].detach().flatten()))
        try:
            with torch.no_grad():
                snn.eval()
                for x in calib:
                    snn(x)
        finally:
            handle.remove()
        u = torch.cat(seen).double()
        k = max(1, min(u.numel(), math.ceil((1 - init_rate) * u.numel())))
        q = float(u.kthvalue(k).values)
        bn = modules[link.bn]
        with torch.no_grad():
            if q > 0:
                c = neuron.u_th / q
                bn.weight.mul_(c)
                bn.bias.mul_(c)
                report["sites"][link.site] = {"action": "scale", "factor": c, "quantile": q}
            else:
                bn.bias.add_(neuron.u_th - q)
                report["sites"][link.site] = {"action": "shift", "shift": neuron.u_th - q, "quantile": q}
    _recompute_bn_stats(snn, calib)
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Measurement: Table 2 of 000_*, App. B of 004_*
# ---------------------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DirectConfig:
    """Everything a direct-training run depends on (written to config.json)."""

    model: str = "digitsnet"
    dataset: str = "digits"
    data_root: str | None = None
    surrogate: str = "s2nn"
    alpha: float | None = None
    tau: float | None = None
    penalty: str = "syn"
    p: float = 1.0
    lambda_norm: float = 0.0
    schedule: str = "linear"
    weight_decay: float | None = None  # None: the preset (Table 6)
    bn_decay: bool = False
    epochs: int | None = None  # None: the preset (150 for the paper's models)
    lr: float | None = None
    optimizer: str = "adam"
    batch_size: int | None = None
    label_smoothing: float = 0.0
    seed: int = 0
    from_ann: str | None = None
    init_rate: float | None = None
    train_samples: int | None = None
    eval_samples: int | None = None
    baseline_j: float | None = None
    energy_model: str = "cmos45nm"


def _resolve(cfg: DirectConfig) -> dict[str, Any]:
    if cfg.penalty not in PENALTY_KINDS + ("none",):
        raise ValueError(f"unknown penalty {cfg.penalty!r}; choose syn, total, balance or none")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    pre = preset(cfg.model, cfg.optimizer, cfg.surrogate)
    hyper = dict(pre["hyper"])
    for key in ("alpha", "tau"):
        value = getattr(cfg, key)
        if value is not None:
            if key not in SURROGATES[cfg.surrogate].defaults:
                raise ValueError(f"surrogate {cfg.surrogate!r} has no hyperparameter {key}")
            hyper[key] = value
    resolved = {
        "lr": cfg.lr if cfg.lr is not None else pre["lr"],
        "weight_decay": cfg.weight_decay if cfg.weight_decay is not None else pre["weight_decay"],
        "epochs": cfg.epochs if cfg.epochs is not None else pre["epochs"],
        "batch_size": cfg.batch_size if cfg.batch_size is not None else pre["batch_size"],
        "hyper": hyper, "preset": pre["source"],
    }
    if resolved["epochs"] < 1:
        raise ValueError(f"epochs must be >= 1, got {resolved['epochs']}")
    if resolved["batch_size"] < 1:
        raise ValueError(f"batch size must be >= 1, got {resolved['batch_size']}")
    if not (resolved["lr"] > 0):
        raise ValueError(f"learning rate must be positive, got {resolved['lr']}")
    if not 0 <= cfg.label_smoothing < 1:
        raise ValueError(f"label smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.init_rate is not None and not cfg.from_ann:
        raise ValueError("init_rate re-scales a network started from an ANN; give from_ann too")
    return resolved


@cleans_up_early_failures
def train_direct(model: str = "digitsnet", dataset: str = "digits", *, out: str | Path, data_root: str | None = None,
                 surrogate: str = "s2nn", penalty: str = "syn", p: float = 1.0, lambda_norm: float = 0.0,
                 schedule: str = "linear", weight_decay: float | None = None, bn_decay: bool = False,
                 epochs: int | None = None, lr: float | None = None, optimizer: str = "adam",
                 batch_size: int | None = None, label_smoothing: float = 0.0, seed: int = 0,
                 from_ann: str | Path | None = None, init_rate: float | None = None, alpha: float | None = None,
                 tau: float | None = None, train_samples: int | None = None, eval_samples: int | None = None,
                 baseline_j: float | None = None, energy_model: str = "cmos45nm", progress: bool = True,
                 threads: int | None = None) -> dict:
    """Train a single-step SNN of zoo ``model`` on ``dataset`` with Eq. 22 of 000_*; write the run folder ``out``.

    Unset hyperparameters come from :func:`preset` (Table 6 of 000_*).  ``lambda_norm`` multiplies Ω_*/Ω_*(1)
    (``penalty`` = syn | total | balance | none, exponent ``p``), linearly scheduled over the epochs; ``weight_decay``
    = λ_WD on conv/linear weights and, with ``bn_decay`` (B_BN = 1), on BN parameters.  ``from_ann``: a checkpoint
    of the same architecture with ReLU (e.g. ``synopt train``'s model.pt); ``init_rate`` re-scales its activity.
    Re-running with the same configuration resumes from ``out/checkpoints/last.pt``.

    Returns ``{"metrics", "summary", "run"}``.
    """
    from synopt import data

    if threads:
        torch.set_num_threads(int(threads))
    cfg = DirectConfig(model=model, dataset=dataset, data_root=data_root, surrogate=surrogate, alpha=alpha, tau=tau,
                       penalty=penalty, p=float(p), lambda_norm=float(lambda_norm), schedule=schedule,
                       weight_decay=weight_decay, bn_decay=bn_decay, epochs=epochs, lr=lr, optimizer=optimizer,
                       batch_size=batch_size, label_smoothing=label_smoothing, seed=seed,
                       from_ann=str(from_ann) if from_ann else None, init_rate=init_rate,
                       train_samples=train_samples, eval_samples=eval_samples, baseline_j=baseline_j,
                       energy_model=energy_model)
    res = _resolve(cfg)
    em = energy.get_energy_model(energy_model)
    zoo.get_spec(model)  # unknown model: one-line error before any work
    if from_ann and not Path(from_ann).is_file():
        raise FileNotFoundError(f"ANN checkpoint {from_ann} does not exist")
    splits = data.load(dataset, data_root, split_seed=seed)
    input_note = None
    if splits.is_event:  # T = 1: the whole recording arrives as one frame of event counts (docs/direct.md)
        input_note = (f"{dataset} is an event dataset: the single-step network takes each recording's time-collapsed "
                      "event counts as its one input frame; SynOps exclude those caused by input events, as in the "
                      "conversion route")
    shape = tuple(splits.input_shape)
    train_set = seeded_subset(splits.train, train_samples, seed)
    ann_digest = hashlib.sha256(Path(from_ann).read_bytes()).hexdigest() if from_ann else None
    run = RunDir(out, {"command": "finetune --direct", **asdict(cfg), "resolved": res, "from_ann_sha256": ann_digest})
    torch.manual_seed(seed)
    net = build_snn(model, shape, splits.num_classes, surrogate, **res["hyper"])
    init_report = None
    if from_ann:
        state = load_checkpoint(from_ann)["state_dict"]
        calib = None
        if init_rate is not None:
            dl = loader(splits.train, 256, shuffle=True, seed=seed)
            calib = [x for _, (x, _) in zip(range(4), dl)]
        init_report = init_from_ann(net, state, calib, init_rate)
    account = energy.analyze(net, shape)
    train_cfg = TrainConfig(epochs=res["epochs"], batch_size=res["batch_size"], lr=res["lr"],
                            weight_decay=res["weight_decay"], optimizer=optimizer, schedule="cosine",
                            label_smoothing=label_smoothing, seed=seed, progress=progress)
    groups = weight_decay_groups(net, res["weight_decay"], bn_decay)
    pen = None if penalty == "none" else Penalty(account, penalty, p, lambda_norm, res["epochs"], schedule)
    ckpt_dir = run.path / "checkpoints"

    def on_epoch_end(epoch: int, row: dict) -> None:
        save_checkpoint(ckpt_dir / f"epoch{epoch + 1:03d}.pt", {"state_dict": net.state_dict(), "epoch": epoch,
                                                                "row": row})

    with SpikeRecorder(net, account) as rec:
        history = fit(net, train_set, splits.val, train_cfg,
                      extra_loss=pen.extra_loss(rec) if pen else None, checkpoint_dir=ckpt_dir,
                      param_groups=groups, desc=f"direct {model}", on_epoch_end=on_epoch_end,
                      on_epoch_start=pen.set_epoch if pen else None)
    save_checkpoint(run.file("model.pt"), {"state_dict": net.state_dict(), "model": model,
                                          "input_shape": list(shape), "num_classes": splits.num_classes,
                                          "surrogate": surrogate, "hyper": res["hyper"]})

    # --- measure: training form, folded form, T = 1 sinabs simulation -------------------------------------------------
    test = splits.test
    m_train = measure(net, account, test, samples=eval_samples)
    metrics = direct_metrics(m_train, account, em, baseline_j)
    fold = None
    if SURROGATES[surrogate].bipolar:  # STE-b emits ±1: no IF export (docs/direct.md)
        metrics["folded"] = {"skipped": f"{surrogate} emits ±1; folding and the IF export need {{0, 1}} spikes",
                             "exportable": False}
    else:
        fold = fold_thresholds(net)
        f_account = energy.analyze(fold.net, shape)
        m_fold = measure(fold.net, f_account, test, samples=eval_samples)
        metrics["folded"] = {
            "accuracy": m_fold.accuracy, "synops": m_fold.synops,
            "prediction_mismatches": int((m_fold.predictions != m_train.predictions).sum()),
            "spike_count_difference": sum(abs(m_fold.spikes_per_layer[k] - m_train.spikes_per_layer[k])
                                          for k in m_train.spikes_per_layer),
            "negated_channels": {k: len(v) for k, v in fold.negated.items()},
            "constant_neurons": fold.constant, "exportable": True,
            "inverted_neurons": {k: int((v < 0).sum()) for k, v in fold.polarity.items()},
        }
    if fold is not None:
        from synopt.simulate.run import simulate

        snn = export_sinabs(fold)
        sim = simulate(snn, test, 1, shape, samples=eval_samples, progress=progress)
        metrics["sinabs_t1"] = {"accuracy": sim.accuracy, "synops": sim.synops,
                                "accuracy_equal": sim.accuracy == m_fold.accuracy,
                                "synops_relative_difference": (sim.synops - m_fold.synops) / max(m_fold.synops, 1)}
    metrics.update({"input_note": input_note, "history": history.epochs, "penalty": {
        "kind": penalty, "p": p, "lambda_norm": lambda_norm, "schedule": schedule,
        "omega_one": pen.omega_one if pen else None, "lambda_raw": pen.lambda_raw if pen else None},
        "weight_decay": {"lambda_wd": res["weight_decay"], "bn_decay": bn_decay,
                         "groups": [{"name": g["name"], "weight_decay": g["weight_decay"],
                                     "params": sum(t.numel() for t in g["params"])} for g in groups]},
        "resolved": res, "init_from_ann": init_report,
        "accounting": account.to_dict(em, m_train.synops_per_layer)})
    spec_source = {"kind": "zoo", "name": model, "checkpoint": None, "onnx": None, "onnx_output": None,
                   "overrides": {"in_channels": shape[0], "input_size": list(shape[1:]),
                                 "num_classes": splits.num_classes}}
    if fold is not None:
        save_snn(run.path / "snn", fold, {"source": spec_source, "input_shape": list(shape), "dataset": dataset,
                                          "num_classes": splits.num_classes,
                                          "neuron": {"surrogate": surrogate, "hyper": res["hyper"]}})
    table = account.table(em, m_train.synops_per_layer)
    write_text(run.file("layers.txt"), table + "\n")
    _plots(run.path, account, metrics)
    run.write_metrics(metrics)
    summary = _summary(model, dataset, metrics, table, run.path)
    write_text(run.file("summary.md"), summary + "\n")
    return {"metrics": metrics, "summary": summary, "run": run.path}


def _plots(folder: Path, account: energy.NetworkAccount, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer.name for layer in account.layers]
    labels = [str(i + 1) for i in range(len(names))]
    for fname, values, ylabel, title in (
        ("firing_rate.png", [100 * metrics["firing_rate"][n] for n in names], "R(l) [%]",
         f"firing rate per layer (Eq. 9), R = {100 * metrics['R']:.2f}%"),
        ("energy_per_layer.png", [1e12 * metrics["e_snn_per_layer_j"][n] for n in names], "E_SNN(l) [pJ]",
         f"energy per layer (Eq. 11), E_SNN = {metrics['e_snn_pj'] / 1e6:.4g} uJ"),
    ):
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.2))
        ax.bar(labels, values, color="tab:blue")
        ax.set_xlabel("spiking layer l (" + ", ".join(names[:3]) + (" ..." if len(names) > 3 else "") + ")")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / fname, dpi=100)
        plt.close(fig)


def _summary(model: str, dataset: str, m: dict, table: str, path: Path) -> str:
    lines = [f"# direct training: {model} on {dataset}", "",
             f"- test accuracy {100 * m['accuracy']:.2f}% ({m['samples']} samples), folded "
             + (f"{100 * m['folded']['accuracy']:.2f}%" if "accuracy" in m["folded"] else "skipped (±1 output)")
             + (f", sinabs T=1 {100 * m['sinabs_t1']['accuracy']:.2f}%" if "sinabs_t1" in m else ""),
             f"- SynOps/inference {m['synops']:,.0f}; E_SNN {m['e_snn_pj'] / 1e6:.4g} uJ"
             + (f" ({100 * m['e_snn_over_baseline']:.1f}% of the baseline)" if m.get("e_snn_over_baseline") else ""),
             f"- R {100 * m['R']:.2f}%; dead neurons {100 * m['dead_rate']:.2f}% "
             f"({m['dead_neurons']:,} of {m['neurons']:,})",
             f"- E_Full/E_Method {m['e_full_over_method']:.2f} "
             f"(with the input layer at E_MAC: {m['e_full_over_method_incl_input_layer']:.2f})",
             "", "```", table, "```", "", f"run folder: {path}"]
    return "\n".join(lines)
