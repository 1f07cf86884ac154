"""QReLU quantization-aware fine-tuning with the SynOp loss (sections 2.2-2.4 of 003_*, Sorbaro et al. 2020)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from synopt import energy
from synopt.convert.bias_timing import check_timing
from synopt.convert.qrelu import OutputQReLU, QReLU, swap_activations
from synopt.convert.rho import scale_first_layer
from synopt.convert.temporal import EqualFramed, RandomFraming, temporal_current, temporal_scores
from synopt.finetune.sites import set_module
from synopt.finetune.train import TrainConfig, fit
from synopt.runs import load_checkpoint


class QReLUNetwork(nn.Sequential):
    """``net`` with QReLUs at every activation site, followed by the output QReLU used at evaluation.

    The network's spikes are counts, so its spiking twin is driven by count coding (current x/T per step).
    ``bias_timing`` is when that twin's biases enter over the steps (``bias_timing.py``): the time-aware forward
    (``temporal.py``: event frames, time-aware QAT) models it; the static forward does not depend on it.
    """

    encoding = "count"

    def __init__(self, net: nn.Module, bias_timing: str = "spread"):
        super().__init__()
        self.add_module("net", net)
        self.add_module("readout", OutputQReLU())
        self.bias_timing = check_timing(bias_timing)

    @property
    def body(self) -> nn.Module:
        return self.net


def qrelu_network(ann: nn.Module, rho: float = 1.0, bias_timing: str = "spread") -> QReLUNetwork:
    """A QReLU copy of a prepared ReLU ``ann`` (BN folded), with first-layer scaling ``rho`` (rho.py) and the dropout
    before its last activation site removed (``drop_inner_dropout``; ``.dropout_removed`` names it)."""
    net = scale_first_layer(ann, rho) if rho != 1.0 else copy.deepcopy(ann)
    qnet = QReLUNetwork(swap_activations(net, QReLU), bias_timing)
    qnet.dropout_removed = drop_inner_dropout(qnet.net)
    return qnet


def drop_inner_dropout(net: nn.Module) -> list[str]:
    """Replace every dropout that runs before the last QReLU of ``net`` by ``nn.Identity``; return their names.

    Inverted dropout keeps a ReLU's expected activation, not a QReLU's: floor(x·m/(1-p)) during training and floor(x)
    at test differ in mean, and the difference compounds layer by layer (an All-ConvNet with dropout on the input and
    after every conv fine-tuned to 55% training accuracy but 19% at test). Dropout after the last activation site
    (before the output layer, e.g. the MNIST-DVS net's) only regularises the logits and is kept. Identical at eval.
    """
    modules = dict(net.named_modules())
    if isinstance(net, fx.GraphModule):
        order = [str(n.target) for n in net.graph.nodes if n.op == "call_module"]
    else:
        order = list(modules)
    last = max((i for i, name in enumerate(order) if isinstance(modules.get(name), QReLU)), default=-1)
    names = [name for name in order[:last] if isinstance(modules.get(name), nn.modules.dropout._DropoutNd)]
    for name in names:
        set_module(net, name, nn.Identity())
    return names


class SynOpLoss:
    """The SynOp loss of Eq. 2 of 003_*: ``alpha * (S0 - S)^2`` with ``alpha = 1/S0^2`` (the paper's choice), i.e.
    ``((S0 - S) / S0)^2``; or the plain penalty ``alpha * S`` when ``target`` is None.

    S is the SynOp estimate per sample of the QReLU activations, from ``synopt.energy`` (exact fan-out); the input
    pseudo-site is excluded (its SynOps do not depend on the weights).
    """

    def __init__(self, account: energy.NetworkAccount, target: float | None = None, alpha: float | None = None):
        if target is None and alpha is None:
            raise ValueError("give a SynOp target S0 or a penalty weight alpha")
        if target is not None and target <= 0:
            raise ValueError(f"the SynOp target must be positive, got {target:g}")
        self.account = account
        self.target = target
        self.alpha = alpha if alpha is not None else 1.0 / float(target) ** 2

    def __call__(self, synops: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            return self.alpha * synops
        return self.alpha * (self.target - synops) ** 2


def qrelu_scores(qnet: QReLUNetwork, x: torch.Tensor, input_shape) -> torch.Tensor:
    """Class scores of the QReLU network for static input ``[B, *input_shape]`` (Eq. 3 of 003_*, ``OutputQReLU``)
    or, time-aware, for event frames ``[B, T, *input_shape]`` (``temporal.py``: the SNN's exact counts)."""
    if x.dim() == len(input_shape) + 1:
        return qnet(x)
    if x.dim() == len(input_shape) + 2:
        return temporal_scores(temporal_current(qnet.net, x.float(), qnet.bias_timing))
    raise ValueError(f"input batch of shape {tuple(x.shape)} matches neither the network input {tuple(input_shape)} "
                     "(static) nor [T, *input] (event frames)")


def estimate(qnet: QReLUNetwork, account: energy.NetworkAccount, data: Dataset, samples: int = 2000,
             batch_size: int = 256, collate_fn=None) -> tuple[float, float, dict[str, float]]:
    """Accuracy and SynOps per inference (total and per layer) of the QReLU network: the ANN estimate.

    Static samples ``[C, H, W]`` give the QReLU estimate (Eq. 3 of 003_*). Event frames ``[T, C, H, W]`` give the
    time-aware estimate (``temporal.py``), which equals the simulated SNN for the same frames (multi-spike IF,
    threshold 1, no lower bound); ``collate_fn`` batches frames of different T (``DatasetSplits.collate_fn``).
    """
    data = Subset(data, range(min(samples, len(data))))
    qnet.eval()
    correct = seen = 0
    per_layer: dict[str, float] = {}
    with torch.no_grad(), energy.ActivityRecorder(qnet.net, account, detach=True) as rec:
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
            x, y = batch[0], batch[1]
            rec.activity = {}
            correct += int((qrelu_scores(qnet, x, account.input_shape).argmax(1) == y).sum())
            for k, v in rec.synops_per_layer(1).items():
                per_layer[k] = per_layer.get(k, 0.0) + v
            seen += len(y)
    per_layer = {k: v / seen for k, v in per_layer.items()}
    return correct / seen, sum(per_layer.values()), per_layer


def relative_lr_groups(qnet: QReLUNetwork, reference: nn.Module, lr: float) -> list[dict]:
    """One optimiser group per parameter of ``qnet`` with learning rate ``lr`` times the tensor's norm over that of the
    same tensor in ``reference`` (the ANN the QReLU network was made from; 1 where it has none or is all zero).

    Adam moves every weight by about lr per step whatever its gradient, so a tensor that first-layer scaling
    (rho.py) multiplied by rho = 64 learns 64 times more slowly, relative to its own size, than it did in the ANN,
    and the SynOp loss cannot lower the activity of the first layer (docs/conversion.md, "relative learning rate").
    Scaling each tensor's rate by its scale restores the ANN's relative step: x rho for the input layer and the
    biases, / rho for the output layer, 1 elsewhere on the first point, then whatever the scale has become.
    """
    ref = dict(reference.named_parameters())
    groups = []
    for name, p in qnet.net.named_parameters():
        r = ref.get(name)
        norms = (float(p.detach().norm()), float(r.detach().norm())) if r is not None and r.shape == p.shape else ()
        scale = norms[0] / norms[1] if norms and min(norms) > 0 else 1.0
        groups.append({"params": [p], "lr": lr * scale, "name": name})
    return groups


SETTLED = 0.1  # closed-loop target: the epoch's SynOps within 10 % of the previous epoch's count as settled


def annealed_targets(start: float, target: float, epochs: int, anneal_fraction: float = 0.5) -> list[float]:
    """Per-epoch SynOp targets: geometric steps from the current SynOps ``start`` down (or up) to ``target`` over the
    first ``anneal_fraction`` of the epochs, then ``target``. The paper reaches low budgets by a schedule of
    halved targets (section 2.4.2 step 3 of 003_*); this applies the same idea within one run."""
    if start <= 0 or epochs < 1:
        return [target] * max(epochs, 1)
    ramp = max(1, math.ceil(anneal_fraction * epochs))
    return [start ** (1 - min(1.0, (e + 1) / ramp)) * target ** min(1.0, (e + 1) / ramp) for e in range(epochs)]


def finetune(qnet: QReLUNetwork, train: Dataset, val: Dataset | None, cfg: TrainConfig, input_shape,
             target: float | None = None, alpha: float | None = None, anneal: bool = True,
             checkpoint_dir: str | Path | None = None, desc: str = "qat",
             on_epoch_end: Callable[[int, dict], None] | None = None,
             framing: RandomFraming | None = None, control: float = 0.0,
             control_start: float = 1.0, lr_reference: nn.Module | None = None) -> list[dict]:
    """Fine-tune ``qnet`` in place with cross-entropy + SynOp loss (Eq. 2 of 003_*); returns the epoch history.

    With ``anneal`` the target moves geometrically from the network's current SynOps to ``target`` over the first
    half of the epochs (``annealed_targets``), which keeps the SynOp term from swamping the classification loss when
    the budget is far below the current activity.

    ``framing`` turns on time-aware QAT for event data: ``train`` and ``val`` then hold every recording as
    ``framing.fine_bins`` time bins ``[F, C, H, W]``; each training batch is cut into T random frames
    (``RandomFraming``) and run as the SNN will run it (``temporal.py``), so the loss sees the IF counts of
    input arriving over time and S counts the spikes the SNN emits. The logits are the output current summed over
    the steps; validation uses equal frames, as many as the most of ``framing.frames``.

    ``control`` > 0 closes the loop on the target (our addition; docs/conversion.md): CE and the SynOp term of Eq. 2
    balance where S sits above S0, so once the schedule has reached ``target`` and the epoch-mean training SynOps S
    have settled (within ``SETTLED`` of the previous epoch's), the S0 given to the loss is multiplied by
    ``(target / S) ** control`` (clamped to [1/4, 2] x target). This drives the trained network onto the target
    instead of leaving the gap to the post-hoc first-layer calibration; waiting for S to settle keeps the correction
    from winding up while the optimiser is still moving S. ``control_start`` is the correction to begin with (a
    previous phase's last ``control_gain``, which every history row records for the epoch after it).

    ``lr_reference`` (the ANN before rho) gives every tensor a learning rate proportional to its scale
    (``relative_lr_groups``).
    """
    account = energy.analyze(qnet.net, input_shape)
    loss_fn = SynOpLoss(account, target, alpha)
    recorder = energy.ActivityRecorder(qnet.net, account)
    gen = torch.Generator()
    if framing is not None:
        val = EqualFramed(val, max(framing.frames)) if val is not None else None
    schedule = None
    if target is not None:
        schedule = [target] * cfg.epochs
        if anneal:
            ref = val if val is not None else train if framing is None else EqualFramed(train, max(framing.frames))
            schedule = annealed_targets(estimate(qnet, account, ref, 1000)[1], target, cfg.epochs)
    gain = {"k": control_start, "last": None}  # the target correction of ``control``, the previous epoch's SynOps

    def correct(epoch: int, row: dict) -> None:
        s, last = row.get("synops", 0.0), gain["last"]
        gain["last"] = s
        settled = last is not None and s > 0 and abs(s / last - 1) < SETTLED
        if schedule is not None and control > 0 and settled and schedule[epoch] == schedule[-1]:
            gain["k"] = min(2.0, max(0.25, gain["k"] * (schedule[epoch] / s) ** control))

    last = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if last is not None and last.exists():  # resuming: replay the correction of the finished epochs
        for epoch, row in enumerate(load_checkpoint(last).get("history", [])):
            correct(epoch, row)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if framing is None:
            return qnet(x)
        if qnet.training:
            return temporal_current(qnet.net, framing.sample(x.float(), gen), qnet.bias_timing).sum(1)
        return qrelu_scores(qnet, x, input_shape)

    class _Recorded(nn.Module):
        """Runs qnet with the recorder attached so the loss sees this step's activity."""

        def __init__(self):
            super().__init__()
            self.qnet = qnet

        def forward(self, x):
            if not self.training:
                return forward(x)
            with recorder:
                return forward(x)

    def extra_logged(_model, x, _logits):
        s = recorder.synops(len(x))
        recorder.activity = {}
        term = loss_fn(s)
        return term, {"synops": float(s.detach()), "synop_loss": float(term.detach()),
                      "target": float(loss_fn.target) if loss_fn.target is not None else 0.0}

    def epoch_start(epoch: int) -> None:
        gen.manual_seed(cfg.seed * 1000 + epoch)  # framings reproducible per epoch, also after a resume
        if schedule is not None:
            loss_fn.target = schedule[epoch] * gain["k"]
            loss_fn.alpha = alpha if alpha is not None else 1.0 / loss_fn.target ** 2  # Eq. 2: alpha = 1/S0^2

    def epoch_end(epoch: int, row: dict) -> None:
        if schedule is not None:
            row["scheduled_target"] = schedule[epoch]
        correct(epoch, row)
        row["control_gain"] = gain["k"]
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    groups = relative_lr_groups(qnet, lr_reference, cfg.lr) if lr_reference is not None else None
    history = fit(_Recorded(), train, val, cfg, extra_loss=extra_logged, checkpoint_dir=checkpoint_dir, desc=desc,
                  on_epoch_end=epoch_end, on_epoch_start=epoch_start, param_groups=groups)
    return history.epochs
