"""QReLU (Eq. 3-4 of 003_*, Sorbaro et al. 2020) and swapping activations in a prepared network."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


class QReLU(nn.Module):
    """Quantized ReLU: forward ``floor(max(x, 0))`` (Eq. 3 of 003_*), backward the gradient of ReLU (Eq. 4).

    The integer output is the spike count an integrate-and-fire neuron with threshold 1 and subtractive reset emits
    for the same total input charge, which is why a QReLU network is a faithful proxy of its spiking twin.
    """

    synopt_neuron = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
