"""Registry of the zoo: name -> :class:`ModelSpec`, :func:`build`, :func:`list_models`, :func:`count_parameters`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import models

__all__ = ["ModelSpec", "REGISTRY", "build", "list_models", "count_parameters"]


@dataclass(frozen=True)
class ModelSpec:
    """What the zoo knows about one architecture.

    ``in_channels``, ``num_classes`` and ``input_size`` are the defaults :func:`build` passes to ``builder``; they
    match ``dataset`` (the name of the default dataset in ``synopt.data``).
    """

    name: str
    builder: Callable[..., nn.Module]
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    dataset: str
    source: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one default input."""
        return (self.in_channels, *self.input_size)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A zero tensor of the default input shape, e.g. for tracing or MAC counting."""
        return torch.zeros(batch_size, *self.input_shape)

    def build(self, **overrides: Any) -> nn.Module:
        kwargs: dict[str, Any] = {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
        }
        kwargs.update(overrides)
        return self.builder(**kwargs)


_SPECS = [
    ModelSpec("cnn7", models.cnn7, 1, 10, (28, 28), "fashion-mnist", "000_* Table 5 (CNN7)"),
    ModelSpec(
        "vgg11", models.vgg11, 3, 10, (32, 32), "cifar10",
        "000_* Table 5 (VGG11), pooling positions corrected per Table 1",
    ),
    ModelSpec(
        "resnet18", models.resnet18, 3, 10, (32, 32), "cifar10",
        "000_* Table 5 (ResNet18), ResB shortcut corrected to 1x1 stride 2",
    ),
    ModelSpec(
        "preactresnet18", models.preactresnet18, 3, 10, (32, 32), "cifar10",
        "004_* §4-5.1, App. A (PreActResNet ResNet18) = 000_* ResNet18 + output dropout 0.1",
    ),
    ModelSpec(
        "preactresnet106", models.preactresnet106, 3, 10, (32, 32), "cifar10",
        "004_* §5 (PreActResNet ResNet106); stage split 13-13-13-13 assumed",
    ),
    ModelSpec(
        "allconvnet", models.allconvnet, 3, 10, (32, 32), "cifar10",
        "003_* §2.4.2; Springenberg et al. 2014 (All-CNN-C)",
    ),
    ModelSpec(
        "mnistdvs", models.mnistdvs, 2, 10, (34, 34), "nmnist",
        "003_* §2.3.2, Fig. 1D (paper input: MNIST-DVS 1x64x64; default here: N-MNIST 2x34x34)",
    ),
    ModelSpec("vgg16", models.vgg16, 3, 10, (32, 32), "cifar10", "002_* §6, App. D (VGG-16, CIFAR-10)"),
    ModelSpec("digitsnet", models.digitsnet, 1, 10, (8, 8), "digits", "synopt (embedded default, sklearn digits)"),
]

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def list_models() -> list[ModelSpec]:
    """All registered architectures, in registry order."""
    return list(REGISTRY.values())


def get_spec(name: str) -> ModelSpec:
    key = name.strip().lower()
    try:
        return REGISTRY[key]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(REGISTRY)}") from None


def build(name: str, **overrides: Any) -> nn.Module:
    """Build a registered architecture with its default input/classes, any builder argument overridden.

    >>> build("cnn7", act=nn.ReLU, dropout=False)   # doctest: +SKIP
    """
    return get_spec(name).build(**overrides)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN running statistics are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
