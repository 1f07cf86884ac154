"""QReLU quantization-aware fine-tuning with the SynOp loss (sections 2.2-2.4 of 003_*, Sorbaro et al. 2020)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from synopt import energy
from synopt.convert.qrelu import OutputQReLU, QReLU, swap_activations
from synopt.convert.rho import scale_first_layer
from synopt.finetune.train import TrainConfig, fit, loader


class QReLUNetwork(nn.Sequential):
    """``net`` with QReLUs at every activation site, followed by the output QReLU used at evaluation.

    The network's spikes are counts, so its spiking twin is driven by count coding (current x/T per step).
    """

    encoding = "count"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.add_module("net", net)
        self.add_module("readout", OutputQReLU())

    @property
    def body(self) -> nn.Module:
        return self.net


def qrelu_network(ann: nn.Module, rho: float = 1.0) -> QReLUNetwork:
    """A QReLU copy of a prepared ReLU ``ann`` (BN folded), with first-layer scaling ``rho`` (rho.py)."""
    net = scale_first_layer(ann, rho) if rho != 1.0 else copy.deepcopy(ann)
    return QReLUNetwork(swap_activations(net, QReLU))


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


def estimate(qnet: QReLUNetwork, account: energy.NetworkAccount, data: Dataset, samples: int = 2000,
             batch_size: int = 256) -> tuple[float, float, dict[str, float]]:
    """Accuracy and SynOps per inference (total and per layer) of the QReLU network: the ANN estimate."""
    data = Subset(data, range(min(samples, len(data))))
    qnet.eval()
    correct = seen = 0
    per_layer: dict[str, float] = {}
    with torch.no_grad(), energy.ActivityRecorder(qnet.net, account, detach=True) as rec:
        for x, y in loader(data, batch_size, shuffle=False):
            rec.activity = {}
            correct += int((qnet(x).argmax(1) == y).sum())
            for k, v in rec.synops_per_layer(1).items():
                per_layer[k] = per_layer.get(k, 0.0) + v
            seen += len(y)
    per_layer = {k: v / seen for k, v in per_layer.items()}
    return correct / seen, sum(per_layer.values()), per_layer


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
             on_epoch_end: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Fine-tune ``qnet`` in place with cross-entropy + SynOp loss; returns the epoch history.

    With ``anneal`` the target moves geometrically from the network's current SynOps to ``target`` over the first
    half of the epochs (``annealed_targets``), which keeps the SynOp term from swamping the classification loss when
    the budget is far below the current activity.
    """
    account = energy.analyze(qnet.net, input_shape)
    loss_fn = SynOpLoss(account, target, alpha)
    recorder = energy.ActivityRecorder(qnet.net, account)
    schedule = None
    if target is not None and anneal:
        start = estimate(qnet, account, val if val is not None else train, 1000)[1]
        schedule = annealed_targets(start, target, cfg.epochs)

    class _Recorded(nn.Module):
        """Runs qnet with the recorder attached so the loss sees this step's activity."""

        def __init__(self):
            super().__init__()
            self.qnet = qnet

        def forward(self, x):
            if not self.training:
                return self.qnet(x)
            with recorder:
                return self.qnet(x)

    def extra_logged(_model, x, _logits):
        s = recorder.synops(len(x))
        recorder.activity = {}
        term = loss_fn(s)
        return term, {"synops": float(s.detach()), "synop_loss": float(term.detach()),
                      "target": float(loss_fn.target) if loss_fn.target is not None else 0.0}

    def epoch_start(epoch: int) -> None:
        if schedule is not None:
            loss_fn.target = schedule[epoch]
            loss_fn.alpha = 1.0 / schedule[epoch] ** 2

    history = fit(_Recorded(), train, val, cfg, extra_loss=extra_logged, checkpoint_dir=checkpoint_dir, desc=desc,
                  on_epoch_end=on_epoch_end, on_epoch_start=epoch_start)
    return history.epochs
