"""Shared building blocks of the model zoo.

Every builder takes an *activation factory* ``act``: a zero-argument callable that returns a NEW activation module
(``nn.ReLU``, a QReLU class, a single-step spiking neuron class, ``functools.partial(...)``, ...).  The helpers here
call it exactly once per activation position, so no module instance is ever shared between two call sites (a shared
instance would become one spiking layer with one shared state after conversion).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

ActFactory = Callable[[], nn.Module]

__all__ = [
    "ActFactory",
    "new_act",
    "conv_out_size",
    "he_init",
    "ResA",
    "ResB",
]


def new_act(act: ActFactory) -> nn.Module:
    """Call the factory once and check it produced an ``nn.Module``."""
    m = act()
    if not isinstance(m, nn.Module):
        raise TypeError(f"activation factory {act!r} returned {type(m).__name__}, expected an nn.Module")
    return m


def conv_out_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial output size of a convolution / pooling window (floor mode, dilation 1)."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(
            f"input of size {size} is too small for kernel {kernel}, stride {stride}, padding {padding}"
        )
    return out


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def he_init(model: nn.Module) -> nn.Module:
    """He (Kaiming) normal initialisation for ReLU of every conv / linear weight (000_* App. A.3); biases to 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _conv(cin: int, cout: int, k: int, s: int = 1, p: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p, bias=False)


class ResA(nn.Module):
    """Pre-activation identity block (000_* Table 5):
    ``[BN-S-C(x)k3s1p1-BN-S-C(x)k3s1p1] + identity``.

    The sum adds conv outputs (analog currents), never spikes.  2 activation sites.
    """

    def __init__(self, channels: int, act: ActFactory):
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(channels),
            new_act(act),
            _conv(channels, channels, 3, 1, 1),
            nn.BatchNorm2d(channels),
            new_act(act),
            _conv(channels, channels, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x) + x
        return out


class ResB(nn.Module):
    """Pre-activation down-sampling block (000_* Table 5, shortcut corrected):
    ``[BN-S-C(x)k3s2p1-BN-S-C(x)k3s1p1] + [BN-S-C(x)k1s2p0]``.

    Table 5 prints the shortcut as k3s1p1, which cannot match the stride-2 main path; it is a 1x1 stride-2
    convolution with its own BN and activation (this reproduces Table 1's Omega_total, Omega_balance and
    E_SNN/E_AC of ResNet18 exactly).  3 activation sites.
    """

    def __init__(self, in_channels: int, channels: int, act: ActFactory, stride: int = 2):
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            new_act(act),
            _conv(in_channels, channels, 3, stride, 1),
            nn.BatchNorm2d(channels),
            new_act(act),
            _conv(channels, channels, 3, 1, 1),
        )
        self.shortcut = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            new_act(act),
            _conv(in_channels, channels, 1, stride, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x) + self.shortcut(x)
        return out
