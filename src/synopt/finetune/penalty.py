"""The objective of direct training (Eq. 22 of 000_*): CE + λ Ω_* + weight decay, and its glue to ``fit``.

Everything counted comes from :mod:`synopt.energy`: Ω_syn / Ω_total / Ω_balance are ``energy.omega`` (Eq. 14-15, 19,
20 of 000_*) on the spikes recorded by :class:`SpikeRecorder`, normalised by ``account.omega_all_firing(kind, p)``
= Ω_*(1) (Eq. 21).  See docs/direct.md for the readings of Eq. 21, the linear schedule (App. A.3) and Eq. 22's
weight decay.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from synopt import energy

__all__ = [
    "PENALTY_KINDS",
    "SCHEDULES",
    "scheduled_lambda",
    "SpikeRecorder",
    "Penalty",
    "weight_decay_groups",
]

PENALTY_KINDS = ("syn", "total", "balance")
SCHEDULES = ("linear", "constant")

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def scheduled_lambda(lam: float, epoch: int, epochs: int, schedule: str = "linear") -> float:
    """λ used in (0-based) ``epoch`` of ``epochs``.

    ``linear`` (App. A.3 of 000_*: "λ was multiplied by the ratio of the current epoch to the full epoch size"):
    λ · (epoch + 1) / epochs, with epochs counted from 1, so the first epoch already trains with λ/E and the last
    with the full λ; constant within an epoch.  ``constant``: λ every epoch.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown penalty schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")
    if schedule == "constant":
        return float(lam)
    return float(lam) * (epoch + 1) / epochs


class SpikeRecorder(energy.ActivityRecorder):
    """``energy.ActivityRecorder`` for single-step networks: one forward = one sample of activity.

    The activity is cleared at the start of every forward of ``model`` (a pre-hook), so training and evaluation
    batches never accumulate; a neuron's output is turned into {0, 1} spikes by its ``spikes()`` method when it has
    one (STE-b emits ±1: its spikes are the neurons with u >= u_th).
    """

    def __enter__(self) -> "SpikeRecorder":
        super().__enter__()
        self._handles.append(self.model.register_forward_pre_hook(lambda _m, _i: self.activity.clear()))
        return self

    def _hook(self, name: str):
        mod = dict(self._sites)[name]
        to_spikes = getattr(mod, "spikes", None)

        def hook(_mod, _inp, out):
            s = to_spikes(out) if to_spikes is not None else out
            self.activity[name] = s.detach() if self.detach else s
        return hook


class Penalty:
    """λ_norm · Ω_*(s) / Ω_*(1) per sample, with λ_norm scheduled over the epochs.

    ``lambda_norm`` is the intensity of the normalised penalty (the λ' values 1 … 8192 of App. A.3 of 000_*); the
    raw coefficient of Ω_* in Eq. 22 is ``lambda_raw = lambda_norm / Ω_*(1)`` (Eq. 21).
    """

    def __init__(self, account: energy.NetworkAccount, kind: str = "syn", p: float = 1.0, lambda_norm: float = 0.0,
                 epochs: int = 1, schedule: str = "linear"):
        if kind not in PENALTY_KINDS:
            raise ValueError(f"unknown penalty {kind!r}; choose one of {', '.join(PENALTY_KINDS)}")
        if not (math.isfinite(p) and p >= 1):
            raise ValueError(f"p must be >= 1 (Definition 3.3 of 000_*), got {p}")
        if not (math.isfinite(lambda_norm) and lambda_norm >= 0):
            raise ValueError(f"lambda_norm must be a non-negative number, got {lambda_norm}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown penalty schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        self.account = account
        self.kind = kind
        self.p = float(p)
        self.lambda_norm = float(lambda_norm)
        self.epochs = int(epochs)
        self.schedule = schedule
        self.omega_one = account.omega_all_firing(kind, self.p)  # Ω_*(1), Table 1 of 000_*
        self.lambda_now = scheduled_lambda(self.lambda_norm, 0, max(self.epochs, 1), schedule)

    @property
    def lambda_raw(self) -> float:
        """λ of Eq. 22 for the un-normalised Ω_* (Eq. 21): λ_norm / Ω_*(1)."""
        return self.lambda_norm / self.omega_one

    def set_epoch(self, epoch: int) -> None:
        """``fit``'s ``on_epoch_start``: the λ of this epoch."""
        self.lambda_now = scheduled_lambda(self.lambda_norm, epoch, self.epochs, self.schedule)

    def normalised(self, activity: dict[str, torch.Tensor], n_samples: int) -> torch.Tensor:
        """Ω_*(s)/Ω_*(1) per sample (differentiable; backward = Eq. 18 through the surrogate)."""
        return energy.omega(self.account, activity, self.kind, self.p, n_samples) / self.omega_one

    def extra_loss(self, recorder: SpikeRecorder):
        """The ``extra_loss`` of ``fit``: λ_now · Ω_*/Ω_*(1) on the spikes of the current batch, plus logs."""
        def loss(_model, x, _logits):
            n = len(x)
            act = recorder.activity
            omega_n = self.normalised(act, n)
            with torch.no_grad():
                syn = float(energy.synops(self.account, {k: v.detach() for k, v in act.items()}, n))
            return self.lambda_now * omega_n, {"omega": float(omega_n.detach()), "lambda": self.lambda_now,
                                               "synops": syn}
        return loss


def weight_decay_groups(model: nn.Module, weight_decay: float, bn_decay: bool) -> list[dict]:
    """Optimizer parameter groups for Eq. 22's λ_WD (‖W‖² + B_BN ‖W_BN‖²).

    Group 0: every parameter outside normalisation layers (conv/linear weights and biases), decay λ_WD.
    Group 1: the affine parameters of batch-norm layers, decay λ_WD if ``bn_decay`` (B_BN = 1) else 0.
    """
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight decay must be a non-negative number, got {weight_decay}")
    bn_ids = {id(p) for m in model.modules() if isinstance(m, _BN_TYPES) for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in params if id(p) not in bn_ids]
    bn = [p for p in params if id(p) in bn_ids]
    groups = [{"params": weights, "weight_decay": float(weight_decay), "name": "weights"}]
    if bn:
        groups.append({"params": bn, "weight_decay": float(weight_decay) if bn_decay else 0.0, "name": "batchnorm"})
    return groups


def l2_terms(groups: Iterable[dict]) -> float:
    """Σ_groups decay · ‖params‖² (for logging; the optimizer applies the decay itself)."""
    total = 0.0
    for g in groups:
        total += g["weight_decay"] * sum(float(p.detach().double().pow(2).sum()) for p in g["params"])
    return total
