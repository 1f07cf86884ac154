"""QReLU (Eq. 3-4 of 003_*, Sorbaro et al. 2020) and swapping activations in a prepared network."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def if_spike_counts(current: torch.Tensor) -> torch.Tensor:
    """Spikes per step of multi-spike IF neurons (threshold 1, subtractive reset, membrane from 0, no lower bound)
    driven by ``current`` ``[B, T, ...]``: the time-aware QReLU.

    With ``V_t = c_1 + ... + c_t`` the cumulative input, the spikes emitted up to step t are
    ``N_t = max(0, max_{s<=t} floor(V_s))``: the membrane before firing at t is ``V_t - N_{t-1}``, the neuron emits
    ``max(floor(V_t) - N_{t-1}, 0)`` spikes (N is an integer), so ``N_t = max(N_{t-1}, floor(V_t))``. For T = 1 this is
    Eq. 3 of 003_*; for T > 1 it is >= floor(relu(V_T)) (a spike cannot be taken back when later input is
    negative). Returns ``N_t - N_{t-1}``. Backward: floor is straight-through (Eq. 4), so the gradient reaches
    the currents up to the step of the running maximum where it is positive (ReLU-like), through ``cummax``.
    """
    if current.dim() < 2:
        raise ValueError(f"if_spike_counts needs [B, T, ...] currents, got shape {tuple(current.shape)}")
    r = torch.relu(current.cumsum(1))
    n = torch.cummax(r + (torch.floor(r) - r).detach(), dim=1).values
    return torch.diff(n, dim=1, prepend=torch.zeros_like(n[:, :1]))


class QReLU(nn.Module):
    """Quantized ReLU: forward ``floor(max(x, 0))`` (Eq. 3 of 003_*), backward the gradient of ReLU (Eq. 4).

    The integer output is the spike count an integrate-and-fire neuron with threshold 1 and subtractive reset emits
    for the same total input charge, which is why a QReLU network is a faithful proxy of its spiking twin.

    With ``steps = T`` set (``synopt.convert.temporal.stepped``) the input is batch-major ``[B*T, ...]`` currents
    arriving over T steps (event frames) and the output is the spikes per step of ``if_spike_counts``: the exact
    count of the IF neuron for input spread over time, not only of its total charge.
    """

    synopt_neuron = True

    def __init__(self):
        super().__init__()
        self.steps: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = getattr(self, "steps", None)
        if steps is not None:
            if x.shape[0] % steps:
                raise ValueError(f"QReLU with steps={steps} needs a [B*T, ...] batch; got {x.shape[0]} rows")
            return if_spike_counts(x.reshape(x.shape[0] // steps, steps, *x.shape[1:])).reshape_as(x)
        r = torch.relu(x)
        return r + (torch.floor(r) - r).detach()  # straight-through: d/dx = ReLU'(x)


def swap_activations(model: nn.Module, factory: Callable[[], nn.Module],
                     kinds: tuple[type, ...] = (nn.ReLU,)) -> nn.Module:
    """Replace every activation module of a type in ``kinds`` by ``factory()`` in place; returns ``model``.

    Works on nested modules and fx GraphModules alike (module names are kept, so the energy accounting and
    checkpoints keep matching).
    """
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, kinds) and not isinstance(child, type(factory())):
                setattr(mod, child_name, factory())
    return model


def spike_count_score(counts: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Class scores of a spiking output layer: spike counts, ties broken by the total input current.

    ``0.5 * sigmoid(current)`` lies in (0, 0.5), so it never reorders different counts. The QReLU network (whose
    counts are ``floor(relu(logits))``) and the simulated SNN use this same rule.
    """
    return counts + 0.5 * torch.sigmoid(current)


class OutputQReLU(nn.Module):
    """QReLU on the logits at evaluation only (section 2.4.2 of 003_*: trained without ReLU, tested with it).

    In training mode it is the identity, so the classifier learns on signed logits; in eval mode it returns the
    spike-count scores of the spiking output layer (``spike_count_score``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.training else spike_count_score(torch.floor(torch.relu(x)), x)
