"""Graph preparation passes: output equivalence in eval mode, structure, trainability, accounting compatibility."""

from __future__ import annotations

import copy
import operator
import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from synopt import energy, zoo
from synopt.energy import AccountingError, ActivityRecorder
from synopt.graph.passes import (
    BoundedReLUReplacedWarning,
    GraphPassError,
    InputConvention,
    MaxPoolReplacedWarning,
    bias_policy,
    fold_batchnorm,
    fold_input_normalization,
    notes_of,
    one_module_per_call_site,
    prepare,
    remove_softmax_head,
    replace_bounded_relu,
    replace_maxpool,
    to_graph,
)

BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# 16x16 instead of CIFAR's 32x32 keeps the file fast; every layer type and every fold is still exercised
ZOO = {"cnn7": (1, 28, 28), "vgg11": (3, 16, 16), "resnet18": (3, 16, 16), "digitsnet": (1, 8, 8)}
SHAPES = {**ZOO, "torchvision_resnet18": (3, 16, 16)}


def randomize_bn(model: nn.Module, shape, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters at a realistic scale: statistics of one random batch, then
    perturbed (shifted means, variances x U(0.5, 2)), gamma ~ U(0.5, 1.5), beta ~ N(0, 0.5^2).  Eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, BN)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *shape, generator=g))
        for bn in bns:
            n = bn.num_features
            bn.momentum = 0.1
            bn.running_mean.add_(0.2 * torch.randn(n, generator=g) * bn.running_var.sqrt())
            bn.running_var.mul_(torch.rand(n, generator=g) * 1.5 + 0.5)
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model.eval()


_CACHE: dict[str, nn.Module] = {}


def get_model(name: str) -> nn.Module:
    """Built once per session; the passes must never modify it (checked in test_input_is_not_modified)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        if name == "torchvision_resnet18":
            model = torchvision.models.resnet18(num_classes=10)
        else:
            model = zoo.build(name, input_size=SHAPES[name][1:])
        _CACHE[name] = randomize_bn(model, SHAPES[name])
    return _CACHE[name]


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_equivalent(ref: nn.Module, new: nn.Module, x: torch.Tensor, tol: float = 1e-5) -> None:
    """max |ref(x) - new(x)| < tol (relative to the output scale when |ref(x)| exceeds 1: float32 rounding)."""
    a, b = outputs(ref, x), outputs(new, x)
    assert a.shape == b.shape
    diff = float((a - b).abs().max())
    assert diff <= tol * max(1.0, float(a.abs().max())), diff


def sample(shape, n: int = 2, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def relu_call_sites(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.ReLU)]


def bn_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), BN)]


# --------------------------------------------------------------------------------------------------------------------
# to_graph and the conventions shared by every pass
# --------------------------------------------------------------------------------------------------------------------


def test_input_is_not_modified_and_notes_accumulate():
    model = get_model("digitsnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm0 = to_graph(model)
    code0 = gm0.code
    gm1 = fold_batchnorm(gm0)
    gm2 = bias_policy(fold_input_normalization(gm1, mean=0.5, std=0.25), "remove")
    assert gm0.code == code0 and len(bn_nodes(gm0)) == 2 and notes_of(gm0) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in gm0.state_dict().items())
    assert gm1 is not gm0 and gm2 is not gm1
    notes = notes_of(gm2)
    assert notes[: len(notes_of(gm1))] == notes_of(gm1)
    assert any(n.startswith("fold_batchnorm:") for n in notes)
    assert any(n.startswith("fold_input_normalization:") for n in notes)
    assert any(n.startswith("bias_policy:") for n in notes)


def test_graph_pass_error_is_a_value_error_naming_the_node():
    class Dilated(nn.Module):
        def forward(self, x):
            return F.max_pool2d(torch.relu(x), 2, dilation=2)

    with pytest.raises(ValueError, match="max_pool2d") as info:
        replace_maxpool(Dilated())
    assert isinstance(info.value, GraphPassError) and info.value.node == "max_pool2d"


# --------------------------------------------------------------------------------------------------------------------
# 1. one module per call site
# --------------------------------------------------------------------------------------------------------------------


def test_one_module_per_call_site_torchvision_resnet18():
    model = get_model("torchvision_resnet18")
    traced = to_graph(model)
    shared = relu_call_sites(traced)
    assert len(shared) == 17 and len({id(traced.get_submodule(n.target)) for n in shared}) == 9
    account = energy.analyze(traced, (3, 16, 16))
    with pytest.raises(AccountingError, match="several call sites"):
        ActivityRecorder(traced, account)

    gm = one_module_per_call_site(model)
    sites = relu_call_sites(gm)
    mods = [gm.get_submodule(n.target) for n in sites]
    assert len(sites) == 17 and len({id(m) for m in mods}) == 17
    assert not any(m.inplace for m in mods)
    assert "layer1.0.relu_1" in dict(gm.named_modules())
    x = sample((3, 16, 16))
    assert_equivalent(model, gm, x)

    account = energy.analyze(gm, (3, 16, 16))
    assert len(account.layers) == 17 and not any("@" in layer.name for layer in account.layers)
    rec = ActivityRecorder(gm, account)
    with rec:
        gm(x)
    assert len(rec.activity) == 17
    assert float(rec.synops(n_samples=len(x)).detach()) > 0


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = torch.relu(self.c2(h)) + h.relu()
        h = F.relu(h - 0.1, inplace=True)
        h = self.c2(h).clamp(min=0)
        g = self.c2(h)
        g += 0.2  # traced as an out-of-place add
        return F.relu(self.fc(g.relu_().flatten(1)))


def test_functional_relus_become_modules():
    model = FunctionalNet().eval()
    gm = one_module_per_call_site(model)
    assert not any(n.op in ("call_function", "call_method") and getattr(n.target, "__name__", n.target)
                   in ("relu", "relu_", "clamp") for n in gm.graph.nodes)
    assert len(relu_call_sites(gm)) == 7
    assert len({id(gm.get_submodule(n.target)) for n in relu_call_sites(gm)}) == 7
    x = sample((2, 6, 6))
    assert_equivalent(model, gm, x, tol=1e-6)
    account = energy.analyze(gm, (2, 6, 6))
    with ActivityRecorder(gm, account) as rec:
        gm(x)
    assert len(rec.activity) == 7


def test_inplace_ops_keep_their_semantics():
    class Aliasing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.conv(x)
            y = self.act(h)  # modifies h: the add below reads relu(h) twice
            z = h + y
            z.mul_(3.0)  # later readers of z see the product
            return z - 1.0, torch.relu_(z)

    model = Aliasing().eval()
    gm = one_module_per_call_site(model)
    assert not gm.get_submodule("act").inplace
    assert not any(n.op == "call_method" and n.target.endswith("_") for n in gm.graph.nodes)
    x = sample((2, 3, 3))
    ref, new = outputs(model, x), outputs(gm, x)
    for a, b in zip(ref, new):
        assert torch.allclose(a, b, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# 2. batch-norm folding
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SHAPES))
def test_fold_batchnorm_equivalence(name):
    model = get_model(name)
    gm = fold_batchnorm(model)
    shape = SHAPES[name]
    assert_equivalent(model, gm, sample(shape))
    kept = [n for n in notes_of(gm) if ": kept " in n]
    if name == "resnet18":  # pre-activation: every BN before a ReLU stays, every BN right after a conv folds
        assert len(bn_nodes(gm)) == len(kept) == 12
        for node in bn_nodes(gm):
            (user,) = node.users
            assert isinstance(gm.get_submodule(user.target), nn.ReLU)
        assert len([n for n in notes_of(gm) if "folded" in n]) == 8
    else:
        assert bn_nodes(gm) == [] and kept == []
        assert not any(isinstance(m, BN) for m in gm.modules())


def test_folded_parameters_are_trainable():
    model = get_model("cnn7")
    gm = fold_batchnorm(model).train()
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None for m in convs[:6]) and convs[6].bias is None  # the last conv had no BN
    params = [p for m in convs[:6] for p in (m.weight, m.bias)]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    assert {id(p) for p in gm.parameters()} >= {id(p) for p in params}
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(gm.parameters(), lr=0.1)
    loss = F.cross_entropy(gm(sample((1, 28, 28), n=4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in params)
    assert all(not torch.equal(b, p) for b, p in zip(before, params))


def _rand_bn(n, dims=2, seed=0, **kw):
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims](n, **kw)
    g = torch.Generator().manual_seed(seed)
    if bn.running_mean is not None:
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=g))
    return bn


class PreAct(nn.Module):
    """add -> BN -> conv: the BN has no preceding weight layer and must fold forward."""

    def __init__(self, padding: int, padding_mode: str = "zeros"):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = _rand_bn(4)
        self.b = nn.Conv2d(4, 5, 3, padding=padding, padding_mode=padding_mode, bias=False)

    def forward(self, x):
        h = self.a(x) + x.mean(1, keepdim=True)
        return self.b(self.bn(h))


@pytest.mark.parametrize("net, shape, folds, why", [
    (lambda: nn.Sequential(_rand_bn(3), nn.Conv2d(3, 4, 3)), (3, 5, 5), True, "following"),
    (lambda: nn.Sequential(_rand_bn(3), nn.Conv2d(3, 4, 3, padding=1)), (3, 5, 5), False, "zero-pads"),
    (lambda: nn.Sequential(_rand_bn(3), nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")), (3, 5, 5), True,
     "following"),
    (lambda: nn.Sequential(_rand_bn(3), nn.Conv2d(3, 4, 3, padding="same")), (3, 5, 5), False, "zero-pads"),
    (lambda: nn.Sequential(_rand_bn(4), nn.Conv2d(4, 6, 1, groups=2)), (4, 5, 5), True, "following"),
    (lambda: nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, padding=1), _rand_bn(6)), (4, 5, 5), True, "preceding"),
    (lambda: nn.Sequential(nn.Flatten(), _rand_bn(12, dims=1), nn.Linear(12, 3)), (3, 2, 2), True, "following"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 5), _rand_bn(5, dims=1)), (3, 2, 2), True, "preceding"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), _rand_bn(4, track_running_stats=False)), (3, 5, 5), False,
     "running statistics"),
    (lambda: PreAct(0), (3, 5, 5), True, "following"),
    (lambda: PreAct(1), (3, 5, 5), False, "zero-pads"),
    (lambda: PreAct(1, "replicate"), (3, 5, 5), True, "following"),
])
def test_fold_batchnorm_forward_backward_and_kept(net, shape, folds, why):
    torch.manual_seed(0)
    model = net().double().eval()
    gm = fold_batchnorm(model)
    assert (bn_nodes(gm) == []) == folds, notes_of(gm)
    note = notes_of(gm)[-1]
    assert (": folded " in note) == folds and why in note, note
    assert_equivalent(model, gm, sample(shape, dtype=torch.float64), tol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# 3. max pooling
# --------------------------------------------------------------------------------------------------------------------


def test_replace_maxpool_torchvision_module():
    model = get_model("torchvision_resnet18")
    with pytest.warns(MaxPoolReplacedWarning, match="'maxpool'"):
        gm = replace_maxpool(model)
    pool = gm.get_submodule("maxpool")
    assert type(pool) is nn.AvgPool2d
    assert (pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad) == (3, 2, 1, True)
    assert not any(isinstance(m, nn.MaxPool2d) for m in gm.modules())
    manual = copy.deepcopy(model)
    manual.maxpool = nn.AvgPool2d(3, 2, 1, count_include_pad=True)
    assert_equivalent(manual, gm, sample((3, 16, 16)))
    assert isinstance(model.maxpool, nn.MaxPool2d)  # untouched
    energy.analyze(gm, (3, 16, 16))


class FunctionalPools(nn.Module):
    def forward(self, x):
        h = F.max_pool2d(torch.relu(x), 3, stride=2, padding=1, ceil_mode=True)
        h = torch.max_pool2d(h, 2)
        return F.adaptive_max_pool2d(h, 1).flatten(1)


class AvgTwins(nn.Module):
    def forward(self, x):
        h = F.avg_pool2d(torch.relu(x), 3, stride=2, padding=1, ceil_mode=True, count_include_pad=True)
        h = F.avg_pool2d(h, 2)
        return F.adaptive_avg_pool2d(h, 1).flatten(1)


def test_replace_maxpool_functional_and_keep():
    model = FunctionalPools()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm = replace_maxpool(model)
    named = [str(w.message) for w in caught if issubclass(w.category, MaxPoolReplacedWarning)]
    assert len(named) == 3 and any("'max_pool2d'" in m for m in named) and any("'max_pool2d_1'" in m for m in named)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert F.avg_pool2d in targets and F.adaptive_avg_pool2d in targets
    assert not targets & {F.max_pool2d, torch.max_pool2d, F.adaptive_max_pool2d}
    assert_equivalent(AvgTwins(), gm, sample((3, 9, 9)), tol=1e-6)
    energy.analyze(gm, (3, 9, 9))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = replace_maxpool(model, keep=True)
    assert_equivalent(model, kept, sample((3, 9, 9)), tol=0)
    assert sum("kept max pooling" in n for n in notes_of(kept)) == 3


class BoundedReLUs(nn.Module):
    """Every spelling of a bounded ReLU: ReLU6 and Hardtanh(0, t) modules (one shared), F.relu6, F.hardtanh,
    clamp(0, t) as a function and an in-place method: 7 call sites."""

    def __init__(self, relu_like=None):
        super().__init__()
        make = relu_like or (lambda hi: nn.ReLU6(inplace=True) if hi == 6 else nn.Hardtanh(0.0, hi))
        self.relu_like = relu_like
        self.c1, self.c2, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(64, 10)
        self.a, self.h = make(6), make(3)

    def forward(self, x):
        x = self.a(self.c1(x))
        x = self.h(self.c2(x))
        x = self.a(x)  # the shared module's second call
        if self.relu_like is None:
            x = F.relu6(torch.clamp(F.hardtanh(x, 0.0, 2.0), 0, 4)).clamp_(0.0, 5.0)
        else:
            x = torch.relu(x)
        return self.fc(x.flatten(1))


def test_replace_bounded_relu_gives_the_relu_network():
    """IF neurons have no ceiling, so every bounded ReLU becomes a ReLU: the result equals the same weights with
    plain ReLUs written by hand, on inputs far above the bounds (where the original differs), and has one ReLU
    module per call site: 7 (the shared module is split by one_module_per_call_site)."""
    model = BoundedReLUs()
    twin = BoundedReLUs(relu_like=lambda hi: nn.ReLU())
    twin.load_state_dict(model.state_dict())
    x = sample((1, 8, 8)) * 50
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm, notes = prepare(model)
    named = [str(w.message) for w in caught if issubclass(w.category, BoundedReLUReplacedWarning)]
    assert len(named) == 6 and sum("[0, 6] at module 'a'" in m for m in named) == 1  # one per module replaced
    assert any("[0, 3] at module 'h'" in m for m in named) and any("[0, 2] at node 'hardtanh'" in m for m in named)
    assert_equivalent(twin, gm, x, tol=1e-5)
    assert not torch.allclose(model(x), twin(x))  # the bounds did clip these inputs
    assert not any(isinstance(m, nn.Hardtanh) for m in gm.modules())
    assert len(energy.analyze(gm, (1, 8, 8)).layers) == len(relu_call_sites(gm)) == 7
    assert sum(n.startswith("replace_bounded_relu:") for n in notes) == 6

    kept, _ = prepare(model, bounded_relu="keep")  # the model's own function, e.g. to measure it
    assert_equivalent(model, kept, x, tol=1e-5)


def test_replace_bounded_relu_refuses_a_negative_floor():
    class Tanhish(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(4, 4), nn.Hardtanh(-1.0, 1.0)

        def forward(self, x):
            return self.act(self.fc(x))

    with pytest.raises(GraphPassError, match=r"'act'.*clipped to \[-1, 1\] is not ReLU-like"):
        replace_bounded_relu(Tanhish())
    with pytest.raises(ValueError, match="bounded_relu must be 'relu' or 'keep'"):
        prepare(Tanhish(), bounded_relu="clip")


# --------------------------------------------------------------------------------------------------------------------
# 4. softmax head
# --------------------------------------------------------------------------------------------------------------------


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.sm = nn.Softmax(dim=1)

    def forward(self, x):
        logits = self.fc(x)
        gate = torch.softmax(x, dim=1)  # not at the output: stays
        return self.sm(logits), F.log_softmax(logits * gate.sum(1, keepdim=True), dim=1), logits.softmax(1)


def test_remove_softmax_head():
    model = Heads().eval()
    gm = remove_softmax_head(model)
    x = sample((6,))
    ref = outputs(model, x)
    new = outputs(gm, x)
    for r, n in zip(ref, new):
        assert torch.allclose(r.exp().sum(1), torch.ones(len(x))) or torch.allclose(r.sum(1), torch.ones(len(x)))
        assert torch.equal(r.argmax(1), n.argmax(1))
    assert torch.allclose(new[0], model.fc(x), atol=1e-6) and torch.allclose(new[2], model.fc(x), atol=1e-6)
    remaining = [n for n in gm.graph.nodes if "softmax" in str(n.target)]
    assert len(remaining) == 1 and remaining[0].target is torch.softmax
    assert not any(isinstance(m, nn.Softmax) for m in gm.modules())
    assert sum(n.startswith("remove_softmax_head: removed") for n in notes_of(gm)) == 3
    assert any("does not feed the output" in n for n in notes_of(gm))

    seq = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3), nn.LogSoftmax(dim=1)).eval()
    gm = remove_softmax_head(seq)
    assert torch.allclose(outputs(gm, x), seq[:3](x), atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# 5. input normalisation
# --------------------------------------------------------------------------------------------------------------------


def convention(x01, mean=None, std=None, input_range=(0.0, 1.0), grayscale_to_rgb=False, channels=3):
    """The explicit transform the folded model must reproduce."""
    lo, hi = input_range
    x = x01 * (hi - lo) + lo
    if grayscale_to_rgb:
        x = x.expand(-1, channels, *x.shape[2:])
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if mean is not None:
        x = x - torch.as_tensor(mean, dtype=x.dtype).reshape(shape)
    if std is not None:
        x = x / torch.as_tensor(std, dtype=x.dtype).reshape(shape)
    return x


def _first_conv_net(padding: int, bias: bool = True, cin: int = 3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(cin, 8, 3, padding=padding, bias=bias), nn.ReLU(),
                         nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


CONVENTIONS = [
    dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    dict(input_range=(0.0, 255.0)),
    dict(input_range=(-1.0, 1.0)),
    dict(input_range=(0.0, 255.0), mean=(120.0, 115.0, 100.0), std=(60.0, 61.0, 62.0)),
    dict(mean=0.5, std=0.5),
]


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("conv", CONVENTIONS)
def test_fold_input_normalization_first_conv(padding, conv):
    model = _first_conv_net(padding, bias=padding == 1)  # a bias is created where the offset folds into it
    gm = fold_input_normalization(model, **conv)
    x01 = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    expected = outputs(model, convention(x01, **conv))
    got = outputs(gm, x01)
    assert (expected - got).abs().max() < 1e-5 * max(1.0, float(expected.abs().max()))
    offsets = [n for n in gm.graph.nodes if n.op == "get_attr"]
    shifts = conv.get("mean") is not None or conv.get("input_range", (0, 1))[0] != 0
    assert bool(offsets) == (padding == 1 and shifts)  # the explicit add only where zero padding needs it
    assert gm.get_submodule("0").bias is not None
    energy.analyze(gm, (3, 9, 9))


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("conv", [dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
                                  dict(mean=0.5, std=0.25), dict(input_range=(0.0, 255.0))])
def test_fold_input_normalization_grayscale_to_rgb(padding, conv):
    model = _first_conv_net(padding)
    gm = fold_input_normalization(model, grayscale_to_rgb=True, **conv)
    x01 = torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(4))
    expected = outputs(model, convention(x01, grayscale_to_rgb=True, **conv))
    got = outputs(gm, x01)
    assert (expected - got).abs().max() < 1e-5 * max(1.0, float(expected.abs().max()))
    expands = [n for n in gm.graph.nodes if n.op == "call_method" and n.target == "expand"]
    per_channel_offsets = padding == 1 and isinstance(conv.get("mean"), tuple)
    assert bool(expands) == per_channel_offsets
    assert gm.get_submodule("0").weight.shape[1] == (3 if per_channel_offsets else 1)
    assert gm.meta["synopt_input"]["channels"] == 1
    energy.analyze(gm, (1, 9, 9))


class KerasStyle(nn.Module):
    """Constant ops on the input, as in ONNX imports of Keras/TF models."""

    def __init__(self, padding: int):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.3, 0.4, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]))
        self.conv = nn.Conv2d(3, 6, 3, padding=padding)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        x = (x * 2.0 - 1.0 - self.mean) / self.std.view(1, 3, 1, 1)
        return self.head(self.conv(x))


@pytest.mark.parametrize("padding", [0, 1])
def test_fold_input_constant_ops(padding):
    model = KerasStyle(padding).eval()
    x01 = torch.rand(2, 3, 7, 7, generator=torch.Generator().manual_seed(5))
    gm = fold_input_normalization(model)  # the model's own ops, no convention: exact
    ops = [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    assert ops == ([operator.add] if padding else [])  # only the offset add that zero padding needs
    assert [n.target for n in gm.graph.nodes if n.op == "get_attr"] == (["input_offset"] if padding else [])
    assert_equivalent(model, gm, x01, tol=1e-5)
    assert len([n for n in notes_of(gm) if "constant op" in n]) == 4
    # with a stated convention on top: new(x01) == old(convention(x01))
    gm = fold_input_normalization(model, input_range=(0, 255))
    expected = outputs(model, convention(x01, input_range=(0, 255)))
    assert (expected - outputs(gm, x01)).abs().max() < 1e-5 * max(1.0, float(expected.abs().max()))
    # without input_sub_div the model's own ops stay (and here they sit between the input and the conv)
    with pytest.raises(GraphPassError, match="not a conv/linear"):
        fold_input_normalization(model, mean=0.5, input_sub_div=False)


def test_fold_input_normalization_linear_heads():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 7), nn.ReLU(), nn.Linear(7, 2)).eval()
    x01 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    conv = dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), input_range=(-1, 1))
    gm = fold_input_normalization(mlp, **conv)
    assert torch.allclose(outputs(gm, x01), outputs(mlp, convention(x01, **conv)), atol=1e-5)
    gm = fold_input_normalization(mlp, grayscale_to_rgb=True, **conv)
    gray = x01[:, :1]
    assert torch.allclose(outputs(gm, gray), outputs(mlp, convention(gray, grayscale_to_rgb=True, **conv)), atol=1e-5)
    flat = nn.Sequential(nn.Linear(5, 3), nn.ReLU()).eval()
    gm = fold_input_normalization(flat, mean=0.5, std=2.0)
    v = torch.rand(4, 5)
    assert torch.allclose(outputs(gm, v), outputs(flat, (v - 0.5) / 2.0), atol=1e-6)


@pytest.mark.parametrize("name", ["digitsnet", "cnn7", "vgg11"])
def test_fold_input_normalization_zoo(name):
    model = get_model(name)
    shape = ZOO[name]
    conv = (dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) if shape[0] == 3
            else dict(mean=0.1307, std=0.3081))
    gm = fold_input_normalization(model, **conv)
    x01 = torch.rand(2, *shape, generator=torch.Generator().manual_seed(7))
    expected = outputs(model, convention(x01, **conv))
    assert (expected - outputs(gm, x01)).abs().max() < 1e-5 * max(1.0, float(expected.abs().max()))
    energy.analyze(gm, shape)


def test_fold_input_normalization_errors():
    class ReluFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(torch.relu(x))

    with pytest.raises(GraphPassError, match="'relu'"):
        fold_input_normalization(ReluFirst(), mean=0.5)
    with pytest.raises(ValueError, match="input_range"):
        fold_input_normalization(_first_conv_net(0), input_range=(1.0, 1.0))
    with pytest.raises(GraphPassError, match="2 per-channel values"):
        fold_input_normalization(_first_conv_net(0), mean=(0.1, 0.2))
    class WidthConstant(nn.Module):  # a (3,)-shaped constant on NCHW broadcasts over the width, not the channels
        def __init__(self):
            super().__init__()
            self.register_buffer("c", torch.tensor([1.0, 2.0, 3.0]))
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x - self.c)

    with pytest.raises(GraphPassError, match="not per channel"):
        fold_input_normalization(WidthConstant())
    gm = fold_input_normalization(ReluFirst())  # nothing stated, no constant ops: a no-op
    assert any("nothing to fold" in n for n in notes_of(gm))


# --------------------------------------------------------------------------------------------------------------------
# 6. biases
# --------------------------------------------------------------------------------------------------------------------


def test_bias_policy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()
    with torch.no_grad():
        model[3].bias[2] = -1.75
    x = sample((2, 6, 6))
    kept = bias_policy(model, "keep")
    assert_equivalent(model, kept, x, tol=0)
    assert any("kept the biases of 2 layer(s)" in n for n in notes_of(kept))

    removed = bias_policy(model, mode="remove")
    assert removed.get_submodule("0").bias is None and removed.get_submodule("3").bias is None
    assert model[0].bias is not None  # untouched
    manual = copy.deepcopy(model)
    with torch.no_grad():
        manual[0].bias.zero_()
        manual[3].bias.zero_()
    assert_equivalent(manual, removed, x, tol=1e-6)
    largest = max(float(model[0].bias.detach().abs().max()), 1.75)
    assert removed.meta["synopt_max_abs_bias_removed"] == pytest.approx(largest)
    assert any("largest |bias| removed = 1.75" in n for n in notes_of(removed))
    energy.analyze(removed, (2, 6, 6))
    with pytest.raises(ValueError, match="keep"):
        bias_policy(model, "zero")


# --------------------------------------------------------------------------------------------------------------------
# 7. prepare
# --------------------------------------------------------------------------------------------------------------------


def test_prepare_torchvision_resnet18_is_countable_and_recordable():
    model = get_model("torchvision_resnet18")
    with pytest.warns(MaxPoolReplacedWarning):
        gm, notes = prepare(model)
    assert notes == notes_of(gm)
    for name in ("one_module_per_call_site", "fold_batchnorm", "replace_maxpool", "bias_policy"):
        assert any(n.startswith(name + ":") for n in notes)
    assert bn_nodes(gm) == [] and len(relu_call_sites(gm)) == 17
    manual = copy.deepcopy(model)
    manual.maxpool = nn.AvgPool2d(3, 2, 1)
    x = sample((3, 16, 16))
    assert_equivalent(manual, gm, x)

    account = energy.analyze(gm, (3, 16, 16))
    assert len(account.layers) == 17
    with ActivityRecorder(gm, account) as rec:
        gm(x)
    assert set(rec.activity) == {layer.name for layer in account.layers}
    assert float(rec.synops(len(x)).detach()) > 0

    kept, _ = prepare(model, maxpool="keep")
    assert_equivalent(model, kept, x)


@pytest.mark.parametrize("name", ["resnet18", "cnn7"])
def test_prepare_zoo_with_input_convention(name):
    model = get_model(name)
    shape = ZOO[name]
    conv = InputConvention(mean=0.5, std=0.25, input_range=(0, 255))
    gm, notes = prepare(nn.Sequential(model, nn.Softmax(dim=1)), input_convention=conv)
    x01 = torch.rand(2, *shape, generator=torch.Generator().manual_seed(8))
    expected = outputs(model, convention(x01, **{k: v for k, v in conv.kwargs().items() if k != "input_sub_div"}))
    assert (expected - outputs(gm, x01)).abs().max() < 1e-5 * max(1.0, float(expected.abs().max()))
    assert any(n.startswith("remove_softmax_head: removed") for n in notes)
    account = energy.analyze(gm, shape)
    with ActivityRecorder(gm, account) as rec:
        gm(x01)
    assert len(rec.activity) == len(account.layers)


@pytest.mark.parametrize("name", list(SHAPES))
def test_prepare_exact_passes_on_every_model(name):
    """All exact passes in a row (max pooling kept) leave every model's output unchanged and countable."""
    model = get_model(name)
    shape = SHAPES[name]
    gm, notes = prepare(model, maxpool="keep")
    assert_equivalent(model, gm, sample(shape, seed=2))
    assert len({id(gm.get_submodule(n.target)) for n in relu_call_sites(gm)}) == len(relu_call_sites(gm))
    after = energy.analyze(gm, shape)
    if name in ("cnn7", "digitsnet", "resnet18"):  # BN is a pass-through for the accounting: no count changes
        before = energy.analyze(model, shape)
        assert before.macs == after.macs and before.omega_all_firing() == after.omega_all_firing()
    ActivityRecorder(gm, after)


def test_prepare_rejects_bad_options():
    with pytest.raises(ValueError, match="maxpool"):
        prepare(nn.Sequential(nn.ReLU()), maxpool="max")
    with pytest.raises(ValueError, match="softmax"):
        prepare(nn.Sequential(nn.ReLU()), softmax="drop")
