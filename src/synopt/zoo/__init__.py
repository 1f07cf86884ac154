"""The model zoo: the papers' architectures, each built once with an activation factory.

>>> from synopt import zoo
>>> model = zoo.build("cnn7")                       # ReLU ANN at 1x28x28, 10 classes
>>> snn = zoo.build("cnn7", act=MySpikingNeuron)     # same layout, one new neuron module per site  # doctest: +SKIP

See docs/zoo.md for sources, parameter counts and the deviations from the papers.
"""

from .blocks import ActFactory, ResA, ResB, he_init
from .models import (
    allconvnet,
    cnn7,
    digitsnet,
    mnistdvs,
    preact_resnet,
    preactresnet18,
    preactresnet106,
    resnet18,
    vgg11,
    vgg16,
)
from .registry import REGISTRY, ModelSpec, build, count_parameters, get_spec, list_models

__all__ = [
    "ActFactory",
    "ModelSpec",
    "REGISTRY",
    "ResA",
    "ResB",
    "allconvnet",
    "build",
    "cnn7",
    "count_parameters",
    "digitsnet",
    "get_spec",
    "he_init",
    "list_models",
    "mnistdvs",
    "preact_resnet",
    "preactresnet18",
    "preactresnet106",
    "resnet18",
    "vgg11",
    "vgg16",
]
