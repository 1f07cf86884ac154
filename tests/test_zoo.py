"""Tests of the model zoo: layouts checked against hand formulas and the papers' published counts."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.fx import symbolic_trace

from synopt.zoo import REGISTRY, build, count_parameters, list_models

ALL = [spec.name for spec in list_models()]
EXPECTED_SITES = {
    "cnn7": 6,
    "vgg11": 10,
    "resnet18": 20,  # 000_* Table 1, Omega_balance
    "preactresnet18": 20,
    "preactresnet106": 108,  # 52 blocks x 2 + 3 ResB shortcuts + 1 final
    "allconvnet": 8,
    "mnistdvs": 3,
    "vgg16": 15,
    "digitsnet": 2,
}


class CountingAct:
    """Activation factory that records every module it makes."""

    def __init__(self, cls: type[nn.Module] = nn.ReLU):
        self.cls = cls
        self.made: list[nn.Module] = []

    def __call__(self) -> nn.Module:
        m = self.cls()
        self.made.append(m)
        return m


class Heaviside(nn.Module):
    """A stand-in single-step spiking neuron (forward only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x >= 1.0).to(x.dtype)


def _run(model: nn.Module, shape: tuple[int, ...], batch: int = 1) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, *shape))


def _site_neurons(model: nn.Module, acts: list[nn.Module], shape: tuple[int, ...]) -> list[int]:
    """Neurons per activation site (per sample), in execution order, via forward hooks."""
    sizes: list[int] = []
    hooks = [a.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel())) for a in acts]
    try:
        _run(model, shape)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def _macs(model: nn.Module, shape: tuple[int, ...]) -> list[int]:
    """MACs per conv / linear layer in execution order: output elements x in_channels/groups x k_h x k_w."""
    per_layer: list[int] = []

    def hook(m: nn.Module, i, o: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            per_layer.append(o[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        else:
            per_layer.append(o[0].numel() * m.in_features)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        _run(model, shape)
    finally:
        for h in hooks:
            h.remove()
    return per_layer


@functools.lru_cache(maxsize=None)
def _counted(name: str) -> tuple[nn.Module, CountingAct]:
    """Each model built once at its default input with a counting factory (dropout on)."""
    factory = CountingAct()
    return build(name, act=factory), factory


@pytest.fixture(scope="module", autouse=True)
def _free_cached_models():
    yield
    _counted.cache_clear()  # the cached ResNet106 alone holds 80M parameters


# --------------------------------------------------------------------------------------------------- registry


def test_registry_fields():
    assert set(ALL) == set(EXPECTED_SITES)
    for name, spec in REGISTRY.items():
        assert spec.name == name == name.lower()
        assert callable(spec.builder)
        assert spec.input_shape == (spec.in_channels, *spec.input_size)
        assert spec.dataset in {"fashion-mnist", "cifar10", "nmnist", "digits"}
        assert spec.source
    assert REGISTRY["digitsnet"].input_shape == (1, 8, 8)
    assert REGISTRY["cnn7"].dataset == "fashion-mnist"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build("resnet50")
    for name in ALL:
        assert name in str(err.value)


def test_name_is_case_insensitive_and_overrides_apply():
    model = build("DigitsNet", num_classes=5, dropout=False)
    assert _run(model, (1, 8, 8), batch=2).shape == (2, 5)


# ------------------------------------------------------------------------------------------------- shapes, fx


@pytest.mark.parametrize("name", ALL)
def test_output_shape_at_default_input(name):
    spec = REGISTRY[name]
    model, _ = _counted(name)
    assert _run(model, spec.input_shape, batch=2).shape == (2, spec.num_classes)


@pytest.mark.parametrize("name", ALL)
def test_fx_traceable(name):
    spec = REGISTRY[name]
    model, _ = _counted(name)
    model.eval()
    gm = symbolic_trace(model)
    x = torch.randn(2, *spec.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


@pytest.mark.parametrize(
    "name, overrides, out_classes",
    [
        ("cnn7", dict(in_channels=3, input_size=(32, 32)), 10),
        ("vgg11", dict(input_size=(64, 64), num_classes=100), 100),
        ("resnet18", dict(in_channels=1, input_size=(28, 28)), 10),
        ("allconvnet", dict(num_classes=100), 100),
        ("mnistdvs", dict(in_channels=1, input_size=(64, 64)), 10),
        ("vgg16", dict(num_classes=100), 100),
        ("digitsnet", dict(input_size=(16, 16)), 10),
    ],
)
def test_other_inputs(name, overrides, out_classes):
    model = build(name, **overrides)
    spec = REGISTRY[name]
    shape = (overrides.get("in_channels", spec.in_channels), *overrides.get("input_size", spec.input_size))
    assert _run(model, shape, batch=2).shape == (2, out_classes)


def test_fc_sizes_follow_input_size():
    fcs = [m for m in build("vgg11", input_size=(64, 64)).modules() if isinstance(m, nn.Linear)]
    assert fcs[0].in_features == 512 * 4 * 4
    fcs = [m for m in build("vgg11").modules() if isinstance(m, nn.Linear)]
    assert fcs[0].in_features == 512 * 2 * 2 == 2048
    # the MNIST-DVS net at the paper's 1x64x64 frames has the published Linear(432, 10) = 12*6*6
    fc = [m for m in build("mnistdvs", in_channels=1, input_size=(64, 64)).modules() if isinstance(m, nn.Linear)]
    assert fc[0].in_features == 432
    fc = [m for m in build("mnistdvs").modules() if isinstance(m, nn.Linear)]
    assert fc[0].in_features == 12 * 2 * 2  # N-MNIST 2x34x34


def test_too_small_input_is_rejected():
    with pytest.raises(ValueError):
        build("cnn7", input_size=(8, 8))


# ----------------------------------------------------------------------------------------- activation factory


@pytest.mark.parametrize("name", ALL)
def test_factory_called_once_per_site_with_distinct_instances(name):
    spec = REGISTRY[name]
    model, factory = _counted(name)
    assert len(factory.made) == EXPECTED_SITES[name]
    assert len({id(m) for m in factory.made}) == len(factory.made)
    # each instance sits at exactly one place in the module tree ...
    placed = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(placed) == len(factory.made)
    assert {id(m) for m in placed} == {id(m) for m in factory.made}
    # ... and is called exactly once per forward pass
    sizes = _site_neurons(model, factory.made, spec.input_shape)
    assert len(sizes) == len(factory.made)


@pytest.mark.parametrize("name", ALL)
def test_output_layer_has_no_activation(name):
    """The last weight layer produces logits: nothing but pooling / flatten after it."""
    model, _ = _counted(name)
    mods = [m for m in model.modules() if not isinstance(m, (nn.Sequential, type(model)))]
    last = max(i for i, m in enumerate(mods) if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert all(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Flatten)) for m in mods[last + 1 :])


def test_spiking_factory_gives_binary_hidden_activity():
    model = build("cnn7", act=Heaviside, dropout=False)
    acts = [m for m in model.modules() if isinstance(m, Heaviside)]
    assert len(acts) == 6
    outs: list[torch.Tensor] = []
    hooks = [a.register_forward_hook(lambda m, i, o: outs.append(o)) for a in acts]
    _run(model, (1, 28, 28), batch=2)
    for h in hooks:
        h.remove()
    assert all(set(o.unique().tolist()) <= {0.0, 1.0} for o in outs)
    symbolic_trace(model)


def test_factory_must_return_module():
    with pytest.raises(TypeError):
        build("digitsnet", act=lambda: torch.relu)


def test_partial_factory():
    model = build("digitsnet", act=functools.partial(nn.Hardtanh, 0.0, 1.0))
    assert sum(isinstance(m, nn.Hardtanh) for m in model.modules()) == 2


# -------------------------------------------------------------------------------------------- dropout, bias, init


@pytest.mark.parametrize(
    "name, n_dropout",
    [("cnn7", 5), ("vgg11", 5), ("resnet18", 0), ("preactresnet18", 1), ("allconvnet", 9), ("mnistdvs", 1),
     ("vgg16", 2), ("digitsnet", 1)],
)
def test_dropout_flag(name, n_dropout):
    assert sum(isinstance(m, nn.Dropout) for m in _counted(name)[0].modules()) == n_dropout
    assert not any(isinstance(m, nn.Dropout) for m in build(name, dropout=False).modules())


def test_cnn7_dropout_rates():
    rates = [m.p for m in _counted("cnn7")[0].modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.1, 0.2, 0.3, 0.2, 0.1]


@pytest.mark.parametrize("name", ALL)
def test_no_bias_in_weight_layers(name):
    model, _ = _counted(name)
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_he_initialisation():
    torch.manual_seed(0)
    model = build("vgg11")
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][4]  # 512 x 256 x 3 x 3
    fan_in = conv.in_channels * 9
    std = conv.weight.std().item()
    assert abs(std - (2.0 / fan_in) ** 0.5) < 0.03 * (2.0 / fan_in) ** 0.5


# -------------------------------------------------------------------------------------------- parameter counts


def test_parameter_count_cnn7():
    cin, n = 1, 10
    convs = cin * 64 * 3 * 3 + 64 * 128 * 6 * 6 + 128 * 256 * 3 * 3 + 256 * 128 + 128 * 64 + 64 * n + n * n
    bn = 2 * (64 + 128 + 256 + 128 + 64 + n)
    assert count_parameters(build("cnn7")) == convs + bn == 633_400


def test_parameter_count_vgg11():
    cin, n = 3, 10
    chans = [cin, 64, 128, 256, 512, 512, 512, 512, 512]
    convs = sum(a * b * 9 for a, b in zip(chans, chans[1:]))
    bn = 2 * sum(chans[1:])
    flat = 512 * 2 * 2
    fc = flat * 4096 + 4096 * 4096 + 4096 * n
    bn1d = 2 * (4096 + 4096)
    assert count_parameters(_counted("vgg11")[0]) == convs + bn + fc + bn1d == 36_216_384


def test_parameter_count_digitsnet():
    convs = 1 * 16 * 9 + 16 * 32 * 9
    bn = 2 * (16 + 32)
    fc = 32 * 2 * 2 * 10
    assert count_parameters(build("digitsnet")) == convs + bn + fc == 6_128


def test_parameter_count_allconvnet():
    chans = [3, 96, 96, 96, 192, 192, 192]
    convs = sum(a * b * 9 for a, b in zip(chans, chans[1:])) + 192 * 192 * 9 + 192 * 192 + 192 * 10
    assert count_parameters(_counted("allconvnet")[0]) == convs == 1_368_480


def test_parameter_count_mnistdvs():
    # paper input 1x64x64: 12*6*6 = 432 features into the linear layer
    assert count_parameters(build("mnistdvs", in_channels=1, input_size=(64, 64))) == (
        1 * 8 * 9 + 8 * 12 * 9 + 12 * 12 * 9 + 432 * 10
    )


def test_trainable_only():
    model = build("digitsnet")
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 6_128 - 144


# --------------------------------------------------------------------------------- neurons per activation site


def test_vgg11_site_neurons_match_table1():
    model, factory = _counted("vgg11")
    sizes = _site_neurons(model, factory.made, (3, 32, 32))
    assert sizes == [65536, 32768, 65536, 32768, 32768, 8192, 2048, 2048, 4096, 4096]
    assert sum(sizes) == 249_856  # 000_* Table 1, Omega_total of VGG11


def test_resnet18_site_neurons_match_table1():
    model, factory = _counted("resnet18")
    sizes = _site_neurons(model, factory.made, (3, 32, 32))
    assert len(sizes) == 20
    assert sum(sizes) == 671_744  # 000_* Table 1, Omega_total of ResNet18


def test_cnn7_site_neurons():
    model, factory = _counted("cnn7")
    sizes = _site_neurons(model, factory.made, (1, 28, 28))
    # 64x13x13, 128x8x8, 256x6x6, 128x6x6, 64x6x6, 10x6x6 (Table 1 prints 59,688; see docs/zoo.md)
    assert sizes == [10816, 8192, 9216, 4608, 2304, 360]
    assert sum(sizes) == 35_496


def test_vgg16_site_neurons():
    model, factory = _counted("vgg16")
    sizes = _site_neurons(model, factory.made, (3, 32, 32))
    assert sum(sizes) == 277_504
    # + 3,072 input neurons = 280,576 = the N implied by 002_* Table 2 (spikes / sparsity)
    assert sum(sizes) + 3 * 32 * 32 == 280_576


# ------------------------------------------------------------------------------------------------ MAC counts


def test_resnet18_macs_match_table1_energy():
    """With every neuron spiking, E_SNN/E_AC = synaptic operations = MACs of every layer fed by spikes, i.e. all but
    the stem (fed by the analog image).  000_* Table 1: 553,730,048 -- reproduced exactly, which also pins the ResB
    shortcut to a 1x1 stride-2 convolution."""
    macs = _macs(_counted("resnet18")[0], (3, 32, 32))
    assert macs[0] == 3 * 64 * 9 * 32 * 32
    assert sum(macs) - macs[0] == 553_730_048


def test_preactresnet106_to_18_mac_ratio():
    """004_* §5.2: full-precision ResNet106 costs about 6.98x ResNet18."""
    r18 = sum(_macs(_counted("preactresnet18")[0], (3, 32, 32)))
    r106 = sum(_macs(_counted("preactresnet106")[0], (3, 32, 32)))
    assert r18 == 555_499_520
    assert round(r106 / r18, 2) == 6.98


def test_allconvnet_macs():
    # 32x32: 3 convs at 32^2 / 16^2, 3 at 16^2 / 8^2, then 6x6 after the unpadded 3x3
    expected = (
        32 * 32 * 96 * 3 * 9 + 32 * 32 * 96 * 96 * 9 + 16 * 16 * 96 * 96 * 9
        + 16 * 16 * 192 * 96 * 9 + 16 * 16 * 192 * 192 * 9 + 8 * 8 * 192 * 192 * 9
        + 6 * 6 * 192 * 192 * 9 + 6 * 6 * 192 * 192 + 6 * 6 * 10 * 192
    )
    assert sum(_macs(_counted("allconvnet")[0], (3, 32, 32))) == expected == 270_798_336


def test_vgg16_matches_003_table1_vgg16():
    """003_* Table 1 lists the CIFAR-10 VGG-16 of Sengupta et al. at 15M parameters and 313M MACs."""
    model = _counted("vgg16")[0]
    assert round(count_parameters(model) / 1e6) == 15
    assert int(sum(_macs(model, (3, 32, 32))) / 1e6) == 313


def test_allconvnet_batch_norm_variant_folds_to_the_same_function():
    """``batch_norm=True`` adds one BN per hidden conv (8) and nothing else; the conversion's BN fold gives a net
    without BN whose outputs equal the BN net's in eval mode."""
    from synopt.graph.bnfold import fold_batchnorm

    torch.manual_seed(0)
    net = build("allconvnet", width=0.25, batch_norm=True).eval()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 8 and [b.num_features for b in bns] == [24, 24, 24, 48, 48, 48, 48, 48]
    plain = build("allconvnet", width=0.25)
    assert count_parameters(net) == count_parameters(plain) + 2 * sum(b.num_features for b in bns)
    for b in bns:  # non-trivial statistics so the fold has something to do
        b.running_mean.uniform_(-0.5, 0.5)
        b.running_var.uniform_(0.5, 2.0)
        b.weight.data.uniform_(0.5, 1.5)
        b.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(4, 3, 32, 32)
    folded = fold_batchnorm(symbolic_trace(net))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-4)
