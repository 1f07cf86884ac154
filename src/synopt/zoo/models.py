"""All zoo builders in one namespace (implemented in :mod:`.cnn` and :mod:`.resnet`)."""

from .cnn import allconvnet, cnn7, digitsnet, mnistdvs, vgg11, vgg16
from .resnet import preact_resnet, preactresnet18, preactresnet106, resnet18

__all__ = [
    "cnn7",
    "vgg11",
    "vgg16",
    "resnet18",
    "preactresnet18",
    "preactresnet106",
    "preact_resnet",
    "allconvnet",
    "mnistdvs",
    "digitsnet",
]
