"""Pre-activation residual networks: ResNet18 of 000_* Table 5 and the PreActResNet18/106 of S²NN (004_*)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import nn

from .blocks import ActFactory, ResA, ResB, conv_out_size, he_init, new_act, pair

__all__ = ["preact_resnet", "resnet18", "preactresnet18", "preactresnet106"]


def preact_resnet(
    blocks: Sequence[int],
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: tuple[int, int] = (32, 32),
    act: ActFactory = nn.ReLU,
    widths: Sequence[int] = (64, 128, 256, 512),
    out_dropout: float = 0.0,
) -> nn.Sequential:
    """Generic pre-activation ResNet in the notation of 000_* Table 5::

        C(w0)k3s1p1 - stage1 - stage2 - ... - BN-S-[DO]-C(n)k1s1p0-GAP

    Stage 1 is ``blocks[0]`` x ResA(w0); every later stage i is ResB(w_i) followed by ``blocks[i]-1`` x ResA(w_i).
    Activation sites: 2 per ResA, 3 per ResB, 1 before the classifier.
    """
    if len(blocks) != len(widths) or any(b < 1 for b in blocks):
        raise ValueError(f"blocks {tuple(blocks)} must give >= 1 block for each of the {len(widths)} widths")
    h, w = pair(input_size)
    for _ in widths[1:]:  # every later stage halves the map (k3 s2 p1)
        h, w = conv_out_size(h, 3, 2, 1), conv_out_size(w, 3, 2, 1)

    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    layers["stem"] = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
    cin = widths[0]
    for i, (n, width) in enumerate(zip(blocks, widths)):
        stage: list[nn.Module] = []
        if i == 0:
            if width != cin:
                raise ValueError("the first stage must keep the stem width")
            stage += [ResA(width, act) for _ in range(n)]
        else:
            stage.append(ResB(cin, width, act))
            stage += [ResA(width, act) for _ in range(n - 1)]
        layers[f"layer{i + 1}"] = nn.Sequential(*stage)
        cin = width
    layers["bn"] = nn.BatchNorm2d(cin)
    layers["act"] = new_act(act)
    if out_dropout > 0:
        layers["dropout"] = nn.Dropout(out_dropout)
    layers["classifier"] = nn.Conv2d(cin, num_classes, 1, 1, 0, bias=False)
    layers["gap"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    return he_init(nn.Sequential(layers))


def resnet18(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: tuple[int, int] = (32, 32),
    act: ActFactory = nn.ReLU,
    dropout: bool = True,
) -> nn.Sequential:
    """ResNet18 of 000_* Table 5 (CIFAR-10)::

        C(64)k3s1p1-{ResA(64)-ResA(64)}-{ResB(128)-ResA(128)}-{ResB(256)-ResA(256)}-{ResB(512)-ResA(512)}-
        BN-S-C(n)k1s1p0-GAP

    20 activation sites; 671,744 activation neurons at 3x32x32 (Table 1).  Table 5 has no dropout in ResNet18, so
    ``dropout`` is accepted for a uniform signature and has no effect.
    """
    del dropout  # Table 5 has none
    return preact_resnet((2, 2, 2, 2), in_channels, num_classes, input_size, act)


def preactresnet18(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: tuple[int, int] = (32, 32),
    act: ActFactory = nn.ReLU,
    dropout: bool = True,
) -> nn.Sequential:
    """The PreActResNet "ResNet18" of S²NN (004_*): same layout as :func:`resnet18` (same authors), plus the
    dropout with rate 0.1 "for the output layer" of 004_* App. A, placed before the classifier convolution."""
    return preact_resnet((2, 2, 2, 2), in_channels, num_classes, input_size, act, out_dropout=0.1 if dropout else 0.0)


def preactresnet106(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: tuple[int, int] = (32, 32),
    act: ActFactory = nn.ReLU,
    dropout: bool = True,
) -> nn.Sequential:
    """The "ResNet106" of S²NN (004_*): 52 pre-activation basic blocks (1 stem + 104 block convs + 1 classifier
    conv = 106 weight layers).  004_* does not give the stage split; we use 13-13-13-13.  Its full-precision MACs
    are 6.98x ResNet18's, the ratio quoted in 004_* §5.2 (any split of 52 blocks gives the same ratio)."""
    return preact_resnet(
        (13, 13, 13, 13), in_channels, num_classes, input_size, act, out_dropout=0.1 if dropout else 0.0
    )
