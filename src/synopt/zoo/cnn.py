"""Plain (non-residual) architectures of the zoo: CNN7, VGG11, VGG16, All-ConvNet, the MNIST-DVS net, DigitsNet.

All builders share one signature style::

    builder(in_channels, num_classes, input_size, act=nn.ReLU, dropout=True) -> nn.Sequential

``act`` is called once per activation site; the output layer never gets one (logits).  Conv / linear layers have no
bias (000_* App. A.1, 003_* §2.3.2 and §2.4.2).  ``dropout=False`` leaves every dropout module out.  Weights get He
normal initialisation (000_* App. A.3).  See docs/zoo.md for the sources and every deviation.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .blocks import ActFactory, conv_out_size, he_init, new_act, pair

__all__ = ["cnn7", "vgg11", "vgg16", "allconvnet", "mnistdvs", "digitsnet"]

_A = "A"  # marks a 2x2 average pool in a VGG layout


def _conv(cin: int, cout: int, k: int, s: int = 1, p: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p, bias=False)


def _gap() -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]


def cnn7(
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: tuple[int, int] = (28, 28),
    act: ActFactory = nn.ReLU,
    dropout: bool = True,
) -> nn.Sequential:
    """CNN7 of 000_* Table 5 (Fashion-MNIST)::

        C(64)k3s2p0-BN-S-DO(.1)-C(128)k6s1p0-BN-S-DO(.2)-C(256)k3s1p0-BN-S-DO(.3)-C(128)k1-BN-S-DO(.2)-
        C(64)k1-BN-S-DO(.1)-C(n)k1-BN-S-C(n)k1-GAP

    6 activation sites.  Both C(10) of the table use ``num_classes`` channels.
    """
    h, w = pair(input_size)
    # validate the input is large enough for the three spatial convolutions
    for k, s in ((3, 2), (6, 1), (3, 1)):
        h, w = conv_out_size(h, k, s), conv_out_size(w, k, s)

    spec = [  # (out_channels, kernel, stride, dropout rate)
        (64, 3, 2, 0.1),
        (128, 6, 1, 0.2),
        (256, 3, 1, 0.3),
        (128, 1, 1, 0.2),
        (64, 1, 1, 0.1),
        (num_classes, 1, 1, 0.0),
    ]
    layers: list[nn.Module] = []
    cin = in_channels
    for cout, k, s, rate in spec:
        layers += [_conv(cin, cout, k, s, 0), nn.BatchNorm2d(cout), new_act(act)]
        if dropout and rate > 0:
            layers.append(nn.Dropout(rate))
        cin = cout
    layers += [_conv(cin, num_classes, 1)] + _gap()
    return he_init(nn.Sequential(*layers))


def _vgg_features(
    layout: Sequence[int | str],
    in_channels: int,
    act: ActFactory,
    dropout_after: dict[int, float],
    dropout: bool,
) -> tuple[list[nn.Module], int, int]:
    """Conv-BN-act stack from a layout list; returns (layers, out_channels, number of 2x2 pools)."""
    layers: list[nn.Module] = []
    cin, n_conv, n_pool = in_channels, 0, 0
    for item in layout:
        if item == _A:
            layers.append(nn.AvgPool2d(2))
            n_pool += 1
            continue
        cout = int(item)
        layers += [_conv(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), new_act(act)]
        n_conv += 1
        if dropout and n_conv in dropout_after:
            layers.append(nn.Dropout(dropout_after[n_conv]))
        cin = cout
    return layers, cin, n_pool


def _pooled(size: tuple[int, int], n_pool: int) -> tuple[int, int]:
    h, w = size
    for _ in range(n_pool):
        h, w = conv_out_size(h, 2, 2), conv_out_size(w, 2, 2)
    return h, w


def _fc_head(
    flat: int, hidden: Sequence[int], num_classes: int, act: ActFactory, rate: float, dropout: bool
) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Flatten()]
    fin = flat
    for width in hidden:
        layers += [nn.Linear(fin, width, bias=False), nn.BatchNorm1d(width), new_act(act)]
        if dropout and rate > 0:
            layers.append(nn.Dropout(rate))
        fin = width
    layers.append(nn.Linear(fin, num_classes, bias=False))
    return layers


# 000_* Table 5 prints the pools after convolutions 2, 3, 5, 6; Table 1 (Omega_total = 249,856 at 32x32) and the
# standard VGG11 'A' configuration put them after convolutions 1, 3, 5, 6.
VGG11_LAYOUT: tuple[int | str, ...] = (64, _A, 128, 256, _A, 512, 512, _A, 512, _A, 512, 512)
VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, _A, 128, 128, _A, 256, 256, 256, _A, 512, 512, 512, _A, 512, 512, 512, _A,
)


def vgg11(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: tuple[int, int] = (32, 32),
    act: ActFactory = nn.ReLU,
    dropout: bool = True,
) -> nn.Sequential:
    """VGG11 of 000_* Table 5 with the pooling positions of Table 1::

        C64-BN-S-DO(.2)-Avg-C128-BN-S-C256-BN-S-Avg-C512-BN-S-DO(.2)-C512-BN-S-Avg-C512-BN-S-Avg-
        C512-BN-S-DO(.2)-C512-BN-S-Flatten-FC(4096)-BN-S-DO(.2)-FC(4096)-BN-S-DO(.2)-FC(n)

    10 activation sites.  The flatten size is 512 * (H/16) * (W/16) and follows ``input_size``.
    """
    feats, cout, n_pool = _vgg_features(VGG11_LAYOUT, in_channels, act, {1: 0.2, 4: 0.2, 7: 0.2}, dropout)
    h, w = _pooled(pair(input_size), n_pool)
    head = _fc_head(cout * h * w, (4096, 4096), num_classes, act, 0.2, dropout)
    return he_init(nn.Sequential(*feats, *head))


def vgg16(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: tuple[int, int] = (32, 32),
    act: ActFactory = nn.ReLU,
    dropout: bool = True,
) -> nn.Sequential:
    """VGG-16 as used by Park & Yoon (002_*, CIFAR-10/100), with average pooling::

        [C64-C64-Avg-C128-C128-Avg-C256x3-Avg-C512x3-Avg-C512x3-Avg] (each C = conv3x3p1-BN-S)
        -Flatten-FC(512)-BN-S-DO(.5)-FC(512)-BN-S-DO(.5)-FC(n)

    15 activation sites.  002_* names the layers CONV1-1..CONV5-3, FC1.. and applies its (kernel-aware) batch norm to
    every layer including FC1; the 512-wide classifier is inferred from 002_* Table 2 (see docs/zoo.md).
    """
    feats, cout, n_pool = _vgg_features(VGG16_LAYOUT, in_channels, act, {}, dropout)
    h, w = _pooled(pair(input_size), n_pool)
    head = _fc_head(cout * h * w, (512, 512), num_classes, act, 0.5, dropout)
    return he_init(nn.Sequential(*feats, *head))


def allconvnet(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: tuple[int, int] = (32, 32),
    act: ActFactory = nn.ReLU,
    dropout: bool = True,
    width: float = 1.0,
    batch_norm: bool = False,
) -> nn.Sequential:
    """All-ConvNet (Springenberg et al. 2014, All-CNN-C) as used by Sorbaro et al. 2020 (003_* §2.4.2)::

        DO(.2)-C96k3p1-S-DO(.1)-C96k3p1-S-DO(.1)-C96k3s2p1-S-DO(.1)-C192k3p1-S-DO(.1)-C192k3p1-S-DO(.1)-
        C192k3s2p1-S-DO(.1)-C192k3p0-S-DO(.1)-C192k1-S-DO(.1)-C(n)k1-GAP

    No bias, no batch norm, 8 activation sites.  003_* puts a 20 % dropout on the input and a 10 % dropout after
    every convolution (we leave it out after the output convolution).  ``width`` scales the 96/192 channels and
    ``batch_norm=True`` puts a BN after every hidden convolution (CPU-budget variants: BN trains in a few epochs what
    the plain net needs hundreds for, and conversion folds it into conv weights and biases; 1.0 / False is the
    paper's network).
    """
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    h, w = pair(input_size)
    spec = [  # (out, kernel, stride, padding)
        (96, 3, 1, 1),
        (96, 3, 1, 1),
        (96, 3, 2, 1),
        (192, 3, 1, 1),
        (192, 3, 1, 1),
        (192, 3, 2, 1),
        (192, 3, 1, 0),
        (192, 1, 1, 0),
    ]
    for _, k, s, p in spec:
        h, w = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    layers: list[nn.Module] = [nn.Dropout(0.2)] if dropout else []
    cin = in_channels
    for cout, k, s, p in spec:
        cout = max(1, round(cout * width))
        layers += [_conv(cin, cout, k, s, p), *([nn.BatchNorm2d(cout)] if batch_norm else []), new_act(act)]
        if dropout:
            layers.append(nn.Dropout(0.1))
        cin = cout
    layers += [_conv(cin, num_classes, 1)] + _gap()
    return he_init(nn.Sequential(*layers))


def mnistdvs(
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: tuple[int, int] = (64, 64),
    act: ActFactory = nn.ReLU,
    dropout: bool = True,
    act_before_pool: bool = False,
) -> nn.Sequential:
    """The MNIST-DVS network of Sorbaro et al. 2020 (003_* §2.3.2, Fig. 1D)::

        C8k3-Avg-S-C12k3-Avg-S-C12k3-Avg-S-Flatten-DO(.5)-FC(n)

    Paper defaults: 1 input channel (polarity discarded), 64x64 frames; channel widths 8/12/12 from the authors'
    published code (synoploss), whose Linear(432, 10) = 12*6*6 pins the 64x64 input.  Works for N-MNIST
    (2x34x34 -> 12*2*2 = 48 features).  The text orders each stage conv -> pool -> ReLU (default); the published code
    uses conv -> ReLU -> pool, available with ``act_before_pool=True``.  3 activation sites.
    """
    h, w = pair(input_size)
    layers: list[nn.Module] = []
    cin = in_channels
    for cout in (8, 12, 12):
        conv, pool, a = _conv(cin, cout, 3), nn.AvgPool2d(2), new_act(act)
        layers += [conv, a, pool] if act_before_pool else [conv, pool, a]
        h, w = conv_out_size(conv_out_size(h, 3), 2, 2), conv_out_size(conv_out_size(w, 3), 2, 2)
        cin = cout
    layers.append(nn.Flatten())
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(cin * h * w, num_classes, bias=False))
    return he_init(nn.Sequential(*layers))


def digitsnet(
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: tuple[int, int] = (8, 8),
    act: ActFactory = nn.ReLU,
    dropout: bool = True,
) -> nn.Sequential:
    """Tiny CNN for scikit-learn's 8x8 digits, the embedded default model::

        C16k3p1-BN-S-Avg-C32k3p1-BN-S-Avg-Flatten-DO(.1)-FC(n)

    2 activation sites, 6,128 parameters at the default input.
    """
    h, w = _pooled(pair(input_size), 2)
    layers: list[nn.Module] = [
        _conv(in_channels, 16, 3, 1, 1),
        nn.BatchNorm2d(16),
        new_act(act),
        nn.AvgPool2d(2),
        _conv(16, 32, 3, 1, 1),
        nn.BatchNorm2d(32),
        new_act(act),
        nn.AvgPool2d(2),
        nn.Flatten(),
    ]
    if dropout:
        layers.append(nn.Dropout(0.1))
    layers.append(nn.Linear(32 * h * w, num_classes, bias=False))
    return he_init(nn.Sequential(*layers))
