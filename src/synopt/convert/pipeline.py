"""The conversion route end to end (003_*, Sorbaro et al. 2020) as one function behind `synopt convert`.

import -> prepare (BN fold, max->avg pool, one neuron per call site) -> baseline SNN (plain weights, θ = 1)
-> QReLU + SynOp-loss fine-tuning for one target or a halving schedule (each point initialised from the previous)
-> calibration of the SynOps to the target -> sinabs IF conversion -> T-step simulation -> run folder.

Event datasets (issue 3): the ANN trains on prefix-augmented collapsed images (``event_augment``), QAT is time-aware
on random framings of the recordings (``temporal_qat``, ``convert/temporal.py``) and every SynOp estimate (rho
choice, annealing start, calibration) is taken on the simulated framing, where it equals the SNN's count.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset, Subset

from synopt import data, energy
from synopt.convert.bias_timing import BIAS_TIMINGS, biased_layers
from synopt.convert.qat import QReLUNetwork, estimate, finetune, qrelu_network
from synopt.convert.rho import scale_first_layer
from synopt.convert.source import ModelSource, keep_copy, load_model
from synopt.convert.temporal import CountCoded, RandomFraming, exact_for
from synopt.convert.to_sinabs import to_sinabs
from synopt.data.events import augmentation_parts
from synopt.finetune.bn_stats import recalibrate_batchnorm
from synopt.finetune.train import TrainConfig, evaluate, fit, seeded_subset
from synopt.runs import (RunDir, load_checkpoint, removed_on_early_failure, save_checkpoint,
                         state_fingerprint, write_json)
from synopt.simulate.run import SimResult, simulate

RHO_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
EVENT_TARGET_CONTROL = 0.5  # default closed-loop target gain on event data (docs/benchmarks.md, conversion-dvs)


@dataclass
class ConvertConfig:
    source: ModelSource
    dataset: str
    out: str
    data_root: str | None = None
    method: str = "qrelu"  # qrelu | scale | rho
    target_synops: float | None = None
    target_fraction: float | None = None  # qrelu: first target = this fraction of the QReLU net's SynOps at rho
    schedule_points: int = 1  # >1: halve the target this many times
    halve_from: str = "target"  # target: next target = this target / 2; achieved: = the SynOps this point reached
    #                             on the validation data / 2 (step 3a of 003_* section 2.4.2; differs without calibration)
    timesteps: int = 10
    epochs: int = 5
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 64
    rho: float | None = None  # None: automatic
    rhos: list[float] = field(default_factory=lambda: list(RHO_GRID))
    calibrate: bool = True
    relative_lr: bool = False  # qrelu: each tensor's learning rate x its scale against the ANN (qat.relative_lr_groups)
    calibration_tolerance: float = 0.02
    target_control: float | None = None  # closed-loop QAT target gain (qat.finetune ``control``; docs/conversion.md);
    #                                       None: 0.5 on event data, 0 (Eq. 2 as published) on static images
    eval_samples: int | None = None  # test samples simulated (None: all)
    estimate_samples: int = 2000
    init_v_fraction: float = 0.0
    min_v_mem: float | None = None
    single_spike: bool = False
    bias_timing: str = "spread"  # when biases enter the IF neurons over T steps: spread | negative-first | signed
    #                              (convert/bias_timing.py); every simulation and time-aware estimate uses it
    maxpool: str = "avg"  # avg | keep
    bias: str = "keep"  # keep | remove
    input_convention: dict | None = None  # fold_input_normalization keywords: input_range, mean, std, grayscale_to_rgb
    percentile: float = 99.9
    frames: dict = field(default_factory=dict)  # event framing options for event datasets (n_time_bins/event_count)
    train_epochs: int = 0  # >0: first train the (zoo) ANN from scratch for this many epochs
    train_lr: float = 3e-3
    train_samples: int | None = None  # a seeded subset of the training split (the sweep's shared budget)
    recalibrate_bn: int = 0  # >0: re-estimate BN statistics on this many training images, dropout off, before
    #                           folding (finetune/bn_stats.py: dropout in front of BN skews the running variances)
    event_augment: str | None = "prefix"  # event datasets: training augmentation, prefix and/or shift joined by +
    #   (prefix: the ANN's images; shift: the ANN's images and the time-aware QAT frames; None: none)
    temporal_qat: bool | None = None  # time-aware QAT (None: on for event data when exact for the neuron options;
    #                                   True on static images: QAT on count-coded input over T steps)
    temporal_epochs: int | None = None  # time-aware QAT only in the last N epochs of each point, the first ones on
    #                                      the static QReLU (T x cheaper); None: every epoch
    temporal_samples: int | None = None  # time-aware QAT epochs train on a seeded subset of this many training
    #                                       samples (each costs T static ones); None: the whole training split
    fine_bins: int = 30  # time-aware QAT: every recording as this many time bins, cut into random frames
    extra_timesteps: list[int] = field(default_factory=list)  # static data: also simulate every point at these T
    qat_frames: list[int] | None = None  # time-aware QAT: frame counts drawn per recording (None: the simulated
    #                                       framing's counts over the training split, e.g. [10] for 10 time bins)
    seed: int = 0
    progress: bool = True


def prepare_options(cfg: "ConvertConfig | dict") -> dict:
    """The ``synopt.graph.prepare`` keywords of a run (recorded in snn/spec.json so reloading prepares alike)."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    return {"fold_bn": True, "maxpool": get("maxpool", "avg"), "softmax": "remove", "bias": get("bias", "keep"),
            "input_convention": get("input_convention")}


def _finished_points(previous: dict | None, fingerprint: str, out: Path) -> list[dict]:
    """The points of an earlier (interrupted or shorter) schedule in ``out`` with the same configuration and ANN,
    up to the first whose checkpoint is missing: a resumed schedule keeps them instead of simulating them again."""
    if not previous or previous.get("ann_fingerprint") != fingerprint:
        return []
    done = []
    for i, point in enumerate(previous.get("points", [])):
        if not (out / "points" / f"point{i}.pt").is_file():
            break
        done.append(point)
    return done


def _recalibrate(model, cfg: ConvertConfig, train: Dataset, test: Dataset) -> tuple[int, float] | None:
    """``--recalibrate-bn``: re-estimate the model's BN statistics in place; returns (BN layers re-estimated, test
    accuracy before), or None when off."""
    if not cfg.recalibrate_bn:
        return None
    before = evaluate(model, test)
    return recalibrate_batchnorm(model, train, cfg.recalibrate_bn, seed=cfg.seed), before


def _prepare(model, cfg: ConvertConfig, notes):
    from synopt.graph import prepare

    prepared, more = prepare(model, **prepare_options(cfg))
    notes.extend(more)
    return prepared


def _imported_accuracy(model, cfg: ConvertConfig, notes: list[str], test: Dataset) -> float | None:
    """Test accuracy of the model as given (input convention and BN folded, nothing replaced) when preparation replaced
    max pooling or a bounded ReLU (changing what the network computes); None when it did not."""
    if not any(n.startswith(("replace_maxpool: max pooling", "replace_bounded_relu:")) for n in notes):
        return None
    from synopt.graph import prepare

    faithful, _ = prepare(model, **{**prepare_options(cfg), "maxpool": "keep", "bounded_relu": "keep"})
    return evaluate(faithful.eval(), test)


_FRAMING_KEYS = ("n_time_bins", "event_count", "time_window", "remainder")


def _splits(cfg: ConvertConfig):
    """(image splits, simulated splits, training images): event datasets are simulated on frames
    (``cfg.frames`` or ``cfg.timesteps`` time bins) and train on ``cfg.event_augment``-ed images."""
    splits = data.load(cfg.dataset, cfg.data_root, split_seed=cfg.seed)
    if cfg.train_samples:
        splits = dataclasses.replace(splits, train=seeded_subset(splits.train, cfg.train_samples, cfg.seed))
    sim, train = splits, splits.train
    if splits.is_event:
        framing = cfg.frames or {"n_time_bins": cfg.timesteps}
        sim = data.load(cfg.dataset, cfg.data_root, split_seed=cfg.seed, representation="frames", **framing)
        if cfg.event_augment:
            train = _train_split(cfg, augment=cfg.event_augment)[0]
    return splits, sim, train


def _train_split(cfg: ConvertConfig, **opts):
    """The (``train_samples``-subset) training split of ``cfg.dataset`` loaded with ``opts`` (non-framing
    ``cfg.frames`` options such as merge_polarities kept)."""
    kept = {k: v for k, v in cfg.frames.items() if k not in _FRAMING_KEYS}
    splits = data.load(cfg.dataset, cfg.data_root, split_seed=cfg.seed, **{**kept, **opts})
    return seeded_subset(splits.train, cfg.train_samples, cfg.seed), splits.val


def _use_temporal_qat(cfg: ConvertConfig, is_event: bool) -> bool:
    """Time-aware QAT: on by default for event data (when exact), opt-in for static images (count coding)."""
    exact = exact_for(cfg.single_spike, cfg.min_v_mem, cfg.init_v_fraction)
    if cfg.temporal_qat and not exact:
        raise ValueError("temporal_qat models multi-spike IF neurons with threshold 1, membrane from 0 and no lower "
                         "bound; drop single_spike / min_v_mem / init_v_fraction or set temporal_qat=False")
    return is_event and exact if cfg.temporal_qat is None else bool(cfg.temporal_qat)


def _random_framing(cfg: ConvertConfig, sim_splits) -> RandomFraming:
    """Time-aware QAT framings: ``cfg.qat_frames``, else the frame counts the simulated framing gives the training
    recordings (so the SynOp loss counts the spikes of the framing the SNN will see), capped at ``cfg.fine_bins``."""
    counts = cfg.qat_frames or ([sim_splits.info["n_time_bins"]] if sim_splits.info.get("n_time_bins") else
                                [sim_splits.train[i][0].shape[0] for i in range(len(sim_splits.train))])
    return RandomFraming(cfg.fine_bins, tuple(min(int(t), cfg.fine_bins) for t in counts))


def _sim(net, encoding: str, sim_splits, cfg: ConvertConfig, shape, split: str = "test",
         samples: int | None = None) -> SimResult:
    snn = to_sinabs(net, encoding=encoding, single_spike=cfg.single_spike, min_v_mem=cfg.min_v_mem,
                    init_v_fraction=cfg.init_v_fraction, bias_timing=cfg.bias_timing)
    return simulate(snn, getattr(sim_splits, split), cfg.timesteps, shape,
                    samples=cfg.eval_samples if samples is None else samples, progress=cfg.progress,
                    seed=cfg.seed, collate_fn=sim_splits.collate_fn)


def _at_timesteps(net, encoding: str, sim_splits, cfg: ConvertConfig, shape) -> dict:
    """The same network simulated at each of ``cfg.extra_timesteps`` (T does not enter QAT or calibration on static
    images, so one fine-tuned model serves every T)."""
    out = {}
    for t in cfg.extra_timesteps:
        r = _sim(net, encoding, sim_splits, dataclasses.replace(cfg, timesteps=int(t)), shape)
        out[str(t)] = {"sim_accuracy": r.accuracy, "sim_synops": r.synops, "accuracy_per_step": r.accuracy_per_step,
                       "silent_output_fraction": r.silent_output_fraction}
    return out


def _point(label: str, sim: SimResult, **extra) -> dict:
    return {"label": label, "sim_accuracy": sim.accuracy, "sim_synops": sim.synops,
            "sim_input_synops": sim.input_synops, "accuracy_per_step": sim.accuracy_per_step,
            "synops_per_layer": sim.synops_per_layer, "firing_rate": sim.firing_rate,
            "silent_layers": sim.silent_layers, "silent_output_fraction": sim.silent_output_fraction, **extra}


BUDGET_TOLERANCE = 0.10  # a calibrated point whose SNN misses its target by more than this gets a notice
CALIBRATION_RANGE = 8.0  # calibrate() searches the first-layer scale c in [1/8, 8]


def budget_miss(synops: float, target: float, c: float) -> str | None:
    """Why a calibrated point's simulated SynOps miss ``target`` by more than ``BUDGET_TOLERANCE``; None if they
    do not."""
    off = synops / target - 1
    if abs(off) <= BUDGET_TOLERANCE:
        return None
    msg = f"the SNN's {synops:,.0f} SynOps are {100 * off:+.0f}% off the target {target:,.0f}"
    if c <= 1.001 / CALIBRATION_RANGE or c >= CALIBRATION_RANGE / 1.001:
        return (msg + f"; the calibration hit its limit (first-layer scale c = {c:.3g}): QAT left the network too far "
                "from the target for first-layer scaling to close the gap; give more --epochs, a "
                + ("lower --rho or a higher target" if off > 0 else "higher --rho or a lower target"))
    return msg + "; the simulation departs from the calibrated QReLU estimate (try --bias-timing signed or "  \
        "--time-aware-qat; docs/conversion.md)"


BIAS_GAP = 0.02  # SNN this far below its static QReLU network: suggest another bias timing


def bias_timing_hint(qrelu_accuracy: float, snn_accuracy: float, timing: str, net: torch.nn.Module) -> str | None:
    """A notice when the SNN of a static-image point falls more than ``BIAS_GAP`` below its QReLU network while
    biases are spread over the steps, the usual cause (docs/conversion.md, "Bias timing"); None otherwise."""
    gap = qrelu_accuracy - snn_accuracy
    if timing != "spread" or gap <= BIAS_GAP or not biased_layers(net):
        return None
    return (f"the SNN is {100 * gap:.1f} points below its QReLU network ({100 * snn_accuracy:.2f}% vs "
            f"{100 * qrelu_accuracy:.2f}%); biases spread as b/T per step let IF neurons fire before the input that "
            "cancels them arrives. Try --bias-timing signed (docs/conversion.md)")


def _rho_qualifies(qrelu_acc: float, qrelu_synops: float, ann_acc: float) -> bool:
    """The automatic-rho rule: the QReLU network within 1 point of the ANN, and not silent (a silent network can
    match a chance-level ANN; it gives QAT nothing to train)."""
    return qrelu_acc >= ann_acc - 0.01 and qrelu_synops > 0


def choose_rho(ann, account, val: Dataset, samples: int, rhos, ann_acc: float,
               collate_fn=None, bias_timing: str = "spread") -> tuple[float, list[dict]]:
    """Automatic first-layer scale (section 2.4.2 step 2 of 003_*): the smallest rho in ``rhos`` whose QReLU network
    comes within 1 point of the ANN's validation accuracy; the most accurate one if none does. ``val`` of event
    frames uses the time-aware estimate (``estimate``)."""
    trials = []
    for rho in sorted(rhos):
        acc, syn, _ = estimate(qrelu_network(ann, rho, bias_timing), account, val, samples, collate_fn=collate_fn)
        trials.append({"rho": rho, "qrelu_val_acc": acc, "qrelu_synops": syn})
        if _rho_qualifies(acc, syn, ann_acc):
            return rho, trials
    return max(trials, key=lambda t: (t["qrelu_val_acc"], t["qrelu_synops"]))["rho"], trials


@torch.no_grad()
def calibrate(qnet: QReLUNetwork, account, val: Dataset, target: float, samples: int,
              tolerance: float = 0.02, collate_fn=None,
              measure: Callable[[QReLUNetwork], float] | None = None) -> tuple[QReLUNetwork, float, float]:
    """Scale the first layer (and with it every later activity) by c so that the SynOps meet ``target``.

    The QReLU estimate equals the simulated count under count coding (see docs/conversion.md), so calibrating on
    it calibrates the SNN. For event frames in ``val`` the estimate is the time-aware one (``estimate``), equal to
    the simulated SynOps on those frames; the image estimate would undercount them. ``measure(net) -> SynOps``
    replaces the estimate (e.g. a simulation for neuron options the time-aware model does not cover).
    The search is a safeguarded secant on log SynOps against log c inside [1/8, 8]: SynOps grow roughly as a power
    of c, so it takes 2-3 evaluations on such curves where bisection took 4-9 (tests), and it falls back to
    bisecting the bracket whenever a secant step leaves it. Returns (network, c, SynOps at c).
    """
    def synops_at(c: float) -> tuple[QReLUNetwork, float]:
        net = QReLUNetwork(scale_first_layer(qnet.net, c, compensate_output=False), qnet.bias_timing)
        return net, measure(net) if measure else estimate(net, account, val, samples, collate_fn=collate_fn)[1]

    def miss(syn: float) -> float:  # log distance to the target (-inf: silent)
        return math.log(syn / target) if syn > 0 else -math.inf

    best = (qnet, 1.0, synops_at(1.0)[1])
    lo, hi = -math.log(CALIBRATION_RANGE), math.log(CALIBRATION_RANGE)
    x, f = 0.0, miss(best[2])
    prev = None  # the previous (log c, miss) for the secant
    for _ in range(14):
        if abs(math.exp(f) - 1) <= tolerance:
            break
        lo, hi = (x, hi) if f < 0 else (lo, x)
        if prev is not None and math.isfinite(f) and math.isfinite(prev[1]) and f != prev[1]:
            step = x - f * (x - prev[0]) / (f - prev[1])
        else:
            step = x - f if math.isfinite(f) else math.nan  # first step: SynOps proportional to c
        nxt = step if lo < step < hi else (lo + hi) / 2
        prev = (x, f)
        net, syn = synops_at(math.exp(nxt))
        x, f = nxt, miss(syn)
        if abs(syn / target - 1) < abs(best[2] / target - 1):
            best = (net, math.exp(nxt), syn)
    return best


def _validate(cfg: ConvertConfig) -> None:
    """Every option check that needs neither model nor data: one message naming the option, before any work."""
    if cfg.method not in ("qrelu", "scale", "rho"):
        raise ValueError(f"unknown method {cfg.method!r}; choose qrelu, scale or rho")
    if cfg.method == "qrelu" and cfg.target_synops is not None and cfg.target_fraction is not None:
        raise ValueError("give only one of --target-synops and --target-fraction")
    if cfg.method == "qrelu" and cfg.target_synops is None and cfg.target_fraction is None:
        raise ValueError("--method qrelu needs one of --target-synops (e.g. 1e6) or --target-fraction (e.g. 0.5: half "
                         "the SynOps of the QReLU network at the chosen rho, step 3a of 003_* section 2.4.2)")
    if cfg.target_fraction is not None and not 0 < cfg.target_fraction <= 1:
        raise ValueError(f"--target-fraction must be in (0, 1], got {cfg.target_fraction:g}")
    if cfg.target_synops is not None and not cfg.target_synops > 0:
        raise ValueError(f"--target-synops must be positive, got {cfg.target_synops:g}")
    if cfg.target_control is not None and not 0 <= cfg.target_control <= 1:
        raise ValueError(f"--target-control is a gain in [0, 1] (0: off, 0.5 a good start), got {cfg.target_control:g}")
    if cfg.temporal_epochs is not None and not 1 <= cfg.temporal_epochs <= cfg.epochs:
        raise ValueError(f"--time-aware-epochs must be between 1 and --epochs ({cfg.epochs}), "
                         f"got {cfg.temporal_epochs}")
    if cfg.temporal_samples is not None and cfg.temporal_samples < 1:
        raise ValueError(f"--time-aware-samples must be at least 1, got {cfg.temporal_samples}")
    if cfg.bias_timing not in BIAS_TIMINGS:
        raise ValueError(f"--bias-timing must be one of {', '.join(BIAS_TIMINGS)}, got {cfg.bias_timing!r}")
    if cfg.recalibrate_bn < 0 or cfg.recalibrate_bn == 1:
        raise ValueError(f"--recalibrate-bn is a number of training images (>= 2; 0: off), got {cfg.recalibrate_bn}")
    if cfg.halve_from not in ("target", "achieved"):
        raise ValueError(f"--halve-from must be target or achieved, got {cfg.halve_from!r}")
    if cfg.timesteps < 1:
        raise ValueError(f"--timesteps must be >= 1, got {cfg.timesteps}")
    if any(int(t) < 1 for t in cfg.extra_timesteps):
        raise ValueError(f"extra time steps must be >= 1, got {cfg.extra_timesteps}")
    checks = [("--epochs", cfg.epochs, cfg.epochs >= 0, ">= 0 (0: no fine-tuning)"),
              ("--lr", cfg.lr, cfg.lr > 0, "positive"),
              ("--weight-decay", cfg.weight_decay, cfg.weight_decay >= 0, ">= 0"),
              ("--batch-size", cfg.batch_size, cfg.batch_size >= 1, ">= 1"),
              ("--schedule", cfg.schedule_points, cfg.schedule_points >= 1, ">= 1"),
              ("--rho", cfg.rho, cfg.rho is None or cfg.rho > 0, "positive"),
              ("the rho grid", cfg.rhos, bool(cfg.rhos) and min(cfg.rhos) > 0, "non-empty and positive"),
              ("--samples", cfg.eval_samples, cfg.eval_samples is None or cfg.eval_samples >= 1, ">= 1"),
              ("estimate_samples", cfg.estimate_samples, cfg.estimate_samples >= 1, ">= 1"),
              ("--percentile", cfg.percentile, 0 < cfg.percentile <= 100, "in (0, 100]"),
              ("--train-epochs", cfg.train_epochs, cfg.train_epochs >= 0, ">= 0"),
              ("train_lr", cfg.train_lr, cfg.train_lr > 0, "positive"),
              ("train_samples", cfg.train_samples, cfg.train_samples is None or cfg.train_samples >= 1, ">= 1"),
              ("calibration_tolerance", cfg.calibration_tolerance, cfg.calibration_tolerance > 0, "positive")]
    for name, value, ok, rule in checks:
        if not ok:
            raise ValueError(f"{name} must be {rule}, got {value}")


@torch.no_grad()
def _check_output(model: torch.nn.Module, shape: tuple[int, ...], num_classes: int, dataset: str) -> None:
    """The model must map a batch of inputs to [batch, classes] scores for the dataset's classes."""
    was_training = model.training
    model.eval()
    try:
        y = model(torch.zeros(2, *shape))
    finally:
        model.train(was_training)
    if not isinstance(y, torch.Tensor) or y.dim() != 2:
        got = tuple(y.shape[1:]) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"the model's output is {got} per sample, not a vector of class scores; pick the logits "
                         "output (--onnx-output NAME or INDEX for an ONNX model)")
    if y.shape[1] != num_classes:
        raise ValueError(f"the model has {y.shape[1]} class outputs but dataset {dataset!r} has {num_classes} classes;"
                         " choose the dataset the model was trained for (or its logits output, --onnx-output)")


def run_conversion(cfg: ConvertConfig) -> dict:
    """Run the conversion route; write the run folder ``cfg.out``; return the metrics.

    Every check runs before the folder is written. A folder holding a run with the same configuration and model
    resumes it; one holding another run is refused. A run that fails before its first checkpoint removes the folder
    it created (nothing half-written is left behind); a later failure keeps it for resuming.
    """
    _validate(cfg)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    model, model_shape, notes = load_model(cfg.source)
    splits, sim_splits, train_images = _splits(cfg)
    temporal = _use_temporal_qat(cfg, splits.is_event)
    for flag, value in (("--time-aware-epochs", cfg.temporal_epochs), ("--time-aware-samples", cfg.temporal_samples)):
        if value is not None and not temporal:
            raise ValueError(f"{flag} needs time-aware QAT: add --time-aware-qat (static images) or keep it on "
                             "(event data)")
    if splits.is_event and cfg.extra_timesteps:
        raise ValueError("extra time steps serve static images only: on event data the framing depends on T "
                         "(run one conversion per T)")
    expected = tuple(model_shape)
    if (cfg.input_convention or {}).get("grayscale_to_rgb") and expected[0] == 3:
        expected = (1, *expected[1:])
    if expected != tuple(splits.input_shape):
        raise ValueError(f"the model expects input {tuple(model_shape)} but dataset {cfg.dataset!r} gives "
                         f"{tuple(splits.input_shape)}; choose a matching dataset or fold the input convention")
    _check_output(model, tuple(model_shape), splits.num_classes, cfg.dataset)
    with warnings.catch_warnings():  # a trial run of the passes: their errors (e.g. the input convention) come now
        warnings.simplefilter("ignore")
        _prepare(model, cfg, [])
    with removed_on_early_failure(out):
        return _convert(cfg, out, model, notes, splits, sim_splits, train_images, temporal)


def _convert(cfg: ConvertConfig, out: Path, model: torch.nn.Module, notes: list[str], splits, sim_splits,
             train_images: Dataset, temporal: bool) -> dict:
    """The body of :func:`run_conversion` once every check has passed."""
    fingerprint = state_fingerprint(model)  # the run resumes only from the same model (and configuration)
    source = keep_copy(cfg.source, out / "source")
    cfg = dataclasses.replace(cfg, source=source)
    run = RunDir(out, {"command": "convert", **asdict(cfg), "model_fingerprint": fingerprint},
                 ignore=("schedule_points", "progress"))
    previous = run.previous_metrics()
    shape = tuple(splits.input_shape)
    if cfg.train_epochs > 0:
        ann_cfg = TrainConfig(epochs=cfg.train_epochs, batch_size=cfg.batch_size, lr=cfg.train_lr, seed=cfg.seed,
                              progress=cfg.progress)
        hist = fit(model, train_images, splits.val, ann_cfg, checkpoint_dir=out / "checkpoints" / "ann", desc="ANN")
        save_checkpoint(out / "source" / "ann.pt", {"state_dict": model.state_dict()})
        notes[:] = [n for n in notes if not n.startswith("no checkpoint given")]
        notes.append(f"trained the ANN from scratch for {cfg.train_epochs} epochs "
                     f"(validation accuracy {100 * hist.epochs[-1].get('val_acc', float('nan')):.2f}%)")
    recal = _recalibrate(model, cfg, train_images, splits.test)
    ann = _prepare(model, cfg, notes)
    ann.eval()
    account = energy.analyze(ann, shape)
    ann_acc = evaluate(ann, splits.test)
    imported_acc = _imported_accuracy(model, cfg, notes, splits.test)
    if imported_acc is not None and abs(imported_acc - ann_acc) > 0.005:
        notes.append(f"preparation changed the ANN's test accuracy from {100 * imported_acc:.2f}% (the model as "
                     f"given) to {100 * ann_acc:.2f}% (max pooling -> average pooling, bounded ReLUs -> ReLU: what "
                     "IF neurons compute); the conversion starts from the prepared network"
                     + ("; --keep-maxpool keeps max pooling" if cfg.maxpool == "avg" else ""))
    if recal:
        n_bn, before = recal
        notes.append(f"recalibrate_bn: re-estimated {n_bn} BatchNorm layer(s) on {cfg.recalibrate_bn:,} training "
                     f"images with dropout off; ANN test accuracy {100 * before:.2f}% -> {100 * ann_acc:.2f}%"
                     if n_bn else "recalibrate_bn: the model has no BatchNorm layer; nothing was re-estimated")
    val = Subset(splits.val, range(min(cfg.estimate_samples, len(splits.val))))
    # SynOp estimates are taken on what the SNN sees: images, or event frames (time-aware, temporal.py)
    est_val = Subset(sim_splits.val, range(min(cfg.estimate_samples, len(sim_splits.val)))) if splits.is_event else val
    static_temporal = temporal and not splits.is_event
    if static_temporal:  # the estimates, rho choice and calibration run the IF dynamics of count coding too
        est_val = CountCoded(val, cfg.timesteps)
    exact = exact_for(cfg.single_spike, cfg.min_v_mem, cfg.init_v_fraction)
    if splits.is_event:
        if cfg.event_augment and cfg.train_epochs > 0:
            notes.append(f"event data: the ANN trained on {cfg.event_augment}-augmented collapsed images")
        if not exact and cfg.method == "qrelu":
            notes.append("event data: the time-aware QReLU does not model these neuron options; calibration "
                         "simulates the SNN on the validation frames instead")
    metrics: dict = {"ann_accuracy": ann_acc, "macs": account.macs, "input_shape": list(shape),
                     "timesteps": cfg.timesteps, "bias_timing": cfg.bias_timing,
                     "ann_fingerprint": state_fingerprint(ann), "notes": notes, "points": []}
    # baseline: plain ANN weights, threshold 1 (the red star of Fig. 2 of 003_*)
    baseline = _sim(ann, "count", sim_splits, cfg, shape)
    metrics["baseline"] = _point("baseline", baseline, at_timesteps=_at_timesteps(ann, "count", sim_splits, cfg,
                                                                                 shape))
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            seed=cfg.seed, progress=cfg.progress)
    final_net, encoding = None, "count"
    if cfg.method == "rho":
        for rho in [cfg.rho] if cfg.rho else cfg.rhos:
            net = scale_first_layer(ann, rho)
            res = _sim(net, "count", sim_splits, cfg, shape)
            metrics["points"].append(_point(f"rho={rho:g}", res, rho=rho,
                                            at_timesteps=_at_timesteps(net, "count", sim_splits, cfg, shape)))
        final_net, metrics["rho"] = net, rho  # snn/ holds the network of the last (or only) rho simulated
    elif cfg.method == "scale":
        from synopt.convert.scaling import robust_scale

        scaled = robust_scale(ann, splits.train, shape, percentile=cfg.percentile)
        encoding = scaled.encoding
        res = _sim(scaled.module, encoding, sim_splits, cfg, shape)
        metrics["points"].append(_point(f"robust p{cfg.percentile:g}", res, lambdas=scaled.lambdas,
                                        at_timesteps=_at_timesteps(scaled.module, encoding, sim_splits, cfg, shape)))
        metrics["notes"].extend(scaled.notes)
        final_net = scaled.module
    else:
        ann_val_acc = evaluate(ann, val)
        rho, trials = (cfg.rho, []) if cfg.rho else choose_rho(ann, account, est_val, cfg.estimate_samples, cfg.rhos,
                                                               ann_val_acc, collate_fn=sim_splits.collate_fn,
                                                               bias_timing=cfg.bias_timing)
        metrics["rho"], metrics["rho_trials"] = rho, trials
        if trials:
            picked = next(tr for tr in trials if tr["rho"] == rho)
            grid = ", ".join(f"{r:g}" for r in sorted(cfg.rhos))
            found = f"{100 * picked['qrelu_val_acc']:.2f}%, {picked['qrelu_synops']:,.0f} SynOps"
            met = _rho_qualifies(picked["qrelu_val_acc"], picked["qrelu_synops"], ann_val_acc)
            notes.append(f"rho = {rho:g} chosen automatically: " + (
                f"the smallest of {grid} whose QReLU network comes within 1 point of the ANN on validation data "
                f"({found}; ANN {100 * ann_val_acc:.2f}%)" if met else
                f"no rho of {grid} brings the QReLU network within 1 point of the ANN on validation data "
                f"({100 * ann_val_acc:.2f}%); the most accurate one is used ({found})") + "; --rho sets it")
        qnet = qrelu_network(ann, rho, cfg.bias_timing)
        if qnet.dropout_removed:
            notes.append(f"QAT without the {len(qnet.dropout_removed)} dropout layer(s) before the last activation "
                         "site (inverted dropout biases the QReLU floor; docs/conversion.md)")
        qat_train, qat_val, framing = train_images, splits.val, None
        if static_temporal:
            framing = RandomFraming(cfg.timesteps, (cfg.timesteps,))  # T bins into T frames: the count coding
            qat_train, qat_val = CountCoded(train_images, cfg.timesteps), est_val  # T x the cost: validate on fewer
            metrics["temporal_qat"] = {"count_coded_steps": cfg.timesteps}
            notes.append(f"static images: time-aware QAT on count-coded input (x/T over T = {cfg.timesteps} steps); "
                         "the loss and the estimates see the IF counts of the simulated network")
        elif temporal:
            framing = _random_framing(cfg, sim_splits)
            shift = "shift" if "shift" in augmentation_parts(cfg.event_augment) else None  # prefix: images only
            qat_train, qat_val = _train_split(cfg, representation="frames", n_time_bins=framing.fine_bins,
                                              augment=shift)
            shares = {t: framing.frames.count(t) / len(framing.frames) for t in sorted(set(framing.frames))}
            metrics["temporal_qat"] = {"fine_bins": framing.fine_bins, "frames": shares}
            notes.append(f"event data: time-aware QAT on random framings of {framing.fine_bins} time bins into "
                         + ", ".join(f"{t} ({100 * w:.0f}%)" for t, w in shares.items()) + " frames")
        if temporal and cfg.temporal_samples:
            qat_train = seeded_subset(qat_train, cfg.temporal_samples, cfg.seed)
            metrics["temporal_qat"]["samples"] = len(qat_train)
            notes.append(f"time-aware QAT epochs on {len(qat_train):,} training samples")

        def simulated_val_synops(net: QReLUNetwork) -> float:
            return _sim(net.net, "count", sim_splits, cfg, shape, "val", cfg.estimate_samples).synops

        measure = simulated_val_synops if splits.is_event and not exact else None
        first = cfg.target_synops
        if first is None:  # step 3a of 003_* section 2.4.2: half (a fraction) of the current SynOps
            start = measure(qnet) if measure else estimate(qnet, account, est_val, cfg.estimate_samples,
                                                           collate_fn=sim_splits.collate_fn)[1]
            if not start > 0:
                raise ValueError(f"the QReLU network at rho = {rho:g} is silent on the validation data (0 SynOps), so "
                                 "--target-fraction has nothing to take a fraction of; give a larger --rho or "
                                 "--target-synops")
            first = cfg.target_fraction * start
            metrics["start_synops"] = start
            notes.append(f"first target {first:,.0f} SynOps = {cfg.target_fraction:g} x {start:,.0f} (the QReLU "
                         f"network at rho = {rho:g})")
        gain = cfg.target_control if cfg.target_control is not None else (
            EVENT_TARGET_CONTROL if splits.is_event else 0.0)
        metrics["target_control"] = gain
        static_epochs = cfg.epochs - cfg.temporal_epochs if temporal and cfg.temporal_epochs else 0
        if static_epochs:
            metrics["temporal_qat"]["epochs"] = cfg.temporal_epochs
            notes.append(f"time-aware QAT only in the last {cfg.temporal_epochs} of {cfg.epochs} epochs per point; "
                         "the first ones train the static QReLU network")
        lr_reference = ann if cfg.relative_lr else None
        target = first
        reuse = _finished_points(previous, metrics["ann_fingerprint"], out)
        for i in range(max(cfg.schedule_points, 1)):
            if i < len(reuse) and math.isclose(reuse[i]["target"], target, rel_tol=1e-9):
                if i == 0:
                    notes.append("resumed: the finished points of the earlier run in this folder are kept as they "
                                 "were (same configuration and ANN), not trained or simulated again")
                qnet.load_state_dict(load_checkpoint(out / "points" / f"point{i}.pt")["state_dict"])
                metrics["points"].append(reuse[i])
                target = reuse[i].get("reached_synops", target) / 2
                continue
            reuse = []  # from the first point that differs, every point is made anew
            label = f"target={target:.4g}"
            hist = []
            if static_epochs:
                hist = finetune(qnet, train_images, splits.val, dataclasses.replace(train_cfg, epochs=static_epochs),
                                shape, target=target, checkpoint_dir=out / "checkpoints" / f"point{i}-static",
                                desc=f"QAT {label} (static)", control=gain, lr_reference=lr_reference)
                for row in hist:
                    row["time_aware"] = False
            last = finetune(qnet, qat_train, qat_val,
                            dataclasses.replace(train_cfg, epochs=cfg.epochs - static_epochs), shape, target=target,
                            checkpoint_dir=out / "checkpoints" / f"point{i}", desc=f"QAT {label}", framing=framing,
                            control=gain, control_start=hist[-1]["control_gain"] if hist else 1.0,
                            lr_reference=lr_reference)
            for row in last:
                row["time_aware"] = temporal
            hist += last
            point = {"target": target, "history": hist}
            if cfg.calibrate:
                qnet_cal, c, syn = calibrate(qnet, account, est_val, target, cfg.estimate_samples,
                                             cfg.calibration_tolerance, collate_fn=sim_splits.collate_fn,
                                             measure=measure)
                point.update({"calibration_scale": c, "calibrated_estimate": syn})
            else:
                qnet_cal, syn = qnet, None
            if cfg.halve_from == "achieved":  # the next target is half the SynOps reached on the validation data
                if syn is None:
                    syn = measure(qnet_cal) if measure else estimate(qnet_cal, account, est_val, cfg.estimate_samples,
                                                                     collate_fn=sim_splits.collate_fn)[1]
                point["reached_synops"] = syn
            n_eval = min(cfg.eval_samples or len(splits.test), len(splits.test))
            # the samples simulated below; on event frames the estimate is time-aware (= the SNN's count)
            est_acc, est_syn, _ = estimate(qnet_cal, account, sim_splits.test, n_eval,
                                           collate_fn=sim_splits.collate_fn)
            if splits.is_event:
                img_acc, img_syn, _ = estimate(qnet_cal, account, splits.test, n_eval)
                point.update({"qrelu_image_accuracy": img_acc, "qrelu_image_synops": img_syn})
            if static_temporal:  # a check on the simulation's first test images (it costs more than simulating)
                n_ta = min(n_eval, cfg.estimate_samples)
                ta_acc, ta_syn, _ = estimate(qnet_cal, account, CountCoded(splits.test, cfg.timesteps), n_ta)
                point.update({"qrelu_time_aware_accuracy": ta_acc, "qrelu_time_aware_synops": ta_syn,
                              "qrelu_time_aware_samples": n_ta})
            res = _sim(qnet_cal.net, "count", sim_splits, cfg, shape)
            hint = None if splits.is_event else bias_timing_hint(est_acc, res.accuracy, cfg.bias_timing, ann)
            if hint and not any(n.startswith("bias timing:") for n in notes):
                notes.append(f"bias timing: {label}: {hint}")
            if cfg.calibrate:
                miss = budget_miss(res.synops, target, point["calibration_scale"])
                if miss:
                    notes.append(f"budget missed: {label}: {miss}")
                    warnings.warn(f"{label}: {miss}", stacklevel=2)
            metrics["points"].append(_point(label, res, qrelu_accuracy=est_acc, qrelu_synops=est_syn,
                                            at_timesteps=_at_timesteps(qnet_cal.net, "count", sim_splits, cfg, shape),
                                            **point))
            save_checkpoint(out / "points" / f"point{i}.pt", {"state_dict": qnet_cal.state_dict(), "target": target})
            run.write_metrics(metrics)  # an interrupted schedule keeps its finished points
            qnet = qnet_cal  # the next (halved) target starts from this model
            target = point.get("reached_synops", target) / 2
        final_net = qnet.net
    for pt in [metrics["baseline"], *metrics["points"]]:
        if pt["silent_output_fraction"] > 0.5:
            notes.append(f"silent output: {pt['label']}: the output layer did not spike for "
                         f"{100 * pt['silent_output_fraction']:.0f}% of the samples (their class comes from the "
                         "accumulated current); raise T or the activity")
        if pt["silent_layers"]:
            notes.append(f"silent layers: {pt['label']}: {', '.join(pt['silent_layers'])} never spiked; the network "
                         "is under-driven there (raise rho or the SynOp target)")
    snn_dir = out / "snn"
    save_checkpoint(snn_dir / "weights.pt", {"state_dict": final_net.state_dict()})
    write_json(snn_dir / "spec.json", {"source": source.to_dict(), "method": cfg.method, "encoding": encoding,
                                       "input_shape": list(shape), "dataset": cfg.dataset,
                                       "rho": metrics.get("rho"), "timesteps": cfg.timesteps,
                                       "init_v_fraction": cfg.init_v_fraction, "min_v_mem": cfg.min_v_mem,
                                       "single_spike": cfg.single_spike, "bias_timing": cfg.bias_timing,
                                       "prepare": prepare_options(cfg)})
    run.write_metrics(metrics)
    from synopt.convert.report import write_conversion_report

    write_conversion_report(run.path, metrics, account)
    return metrics
