"""Robust weight scaling (synopt.convert.scaling) against hand-computed lambdas, exact function preservation on
sequential / residual / concatenation networks, the silent-layer guard, zeros excluded from the percentile, and a
rate-coded SNN on scikit-learn digits."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from synopt import energy
from synopt.convert.scaling import (ScalingError, SilentLayerWarning, StreamingPercentile, robust_scale,
                                    scale_groups)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks on 2 shared cores: one intra-op thread is faster and kinder to the neighbours."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dataset(x: torch.Tensor) -> TensorDataset:
    return TensorDataset(x, torch.zeros(len(x), dtype=torch.long))


def site_outputs(model: nn.Module, x: torch.Tensor, input_shape) -> dict[str, torch.Tensor]:
    account = energy.analyze(model, input_shape)
    with torch.no_grad(), energy.ActivityRecorder(model, account, detach=True) as rec:
        model(x)
    return dict(rec.activity)


# --------------------------------------------------------------------------------------------------------------------
# A 2-layer MLP by hand
# --------------------------------------------------------------------------------------------------------------------

X_MLP = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 1.0]])


def hand_mlp() -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear with the weights of the hand computation below."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.5, -1.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, 0.5]]))
        net[2].bias.copy_(torch.tensor([-1.0, 2.0]))
        net[4].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
        net[4].bias.copy_(torch.tensor([0.25, -0.5]))
    return net


# By hand, on X_MLP:
#   a1 = relu(W1 x + b1) = [1.5, 1], [0, 0], [1.5, 4], [0.5, 2]   -> non-zeros 0.5 1 1.5 1.5 2 4
#   a2 = relu(W2 a1 + b2) = [1.5, 1], [0, 2], [4.5, 2.5], [1.5, 2.5] -> non-zeros 1 1.5 1.5 2 2.5 2.5 4.5
# percentile 100: lambda1 = 4, lambda2 = 4.5
# percentile 50 (linear interpolation over the non-zeros): lambda1 = sorted[2.5] = 1.5, lambda2 = sorted[3] = 2
#   (with the zeros included, as sinabs does, the medians would be 1.25 and 1.75)


def test_mlp_percentile_100_by_hand():
    net = hand_mlp()
    before = copy.deepcopy(net.state_dict())
    res = robust_scale(net, dataset(X_MLP), (2,), percentile=100)
    assert res.lambdas == pytest.approx({"1": 4.0, "3": 4.5})
    assert res.percentiles == pytest.approx({"1": 4.0, "3": 4.5})
    assert res.groups == [["1"], ["3"]]
    assert res.encoding == "rate" and res.samples == 4 and res.input_lambda == 1.0 and res.output_lambda == 1.0
    m = res.module
    # W1 * 1/4, b1 / 4
    assert torch.allclose(m[0].weight, torch.tensor([[0.25, -0.25], [0.5, 0.25]]))
    assert torch.allclose(m[0].bias, torch.tensor([0.125, -0.25]))
    # W2 * 4/4.5, b2 / 4.5 (NOT b2 * 4/4.5 = [-8/9, 16/9])
    assert torch.allclose(m[2].weight, torch.tensor([[8 / 9, 8 / 9], [-8 / 9, 4 / 9]]))
    assert torch.allclose(m[2].bias, torch.tensor([-2 / 9, 4 / 9]))
    # output layer: W3 * 4.5, b3 unchanged (lambda_out = 1)
    assert torch.allclose(m[4].weight, torch.tensor([[4.5, -4.5], [2.25, 9.0]]))
    assert torch.allclose(m[4].bias, torch.tensor([0.25, -0.5]))
    assert res.layer_scales == {"0": (1.0, 4.0), "2": (4.0, 4.5), "4": (4.5, 1.0)}  # exact in float
    # the input network is untouched
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    # every site is divided by its lambda exactly; the calibration maximum becomes 1
    orig, scaled = site_outputs(net, X_MLP, (2,)), site_outputs(m, X_MLP, (2,))
    for name, lam in res.lambdas.items():
        assert torch.allclose(scaled[name], orig[name] / lam, atol=1e-6)
        assert float(scaled[name].max()) == pytest.approx(1.0)
    with torch.no_grad():
        assert torch.allclose(m(X_MLP), net(X_MLP), atol=1e-6)


def test_mlp_percentile_50_by_hand():
    res = robust_scale(hand_mlp(), dataset(X_MLP), (2,), percentile=50)
    assert res.lambdas == pytest.approx({"1": 1.5, "3": 2.0})
    m = res.module
    assert torch.allclose(m[0].weight, torch.tensor([[1.0, -1.0], [2.0, 1.0]]) / 1.5)
    assert torch.allclose(m[0].bias, torch.tensor([0.5 / 1.5, -1 / 1.5]))
    assert torch.allclose(m[2].weight, torch.tensor([[0.75, 0.75], [-0.75, 0.375]]))
    assert torch.allclose(m[2].bias, torch.tensor([-0.5, 1.0]))  # b2 / 2, not b2 * 0.75 = [-0.75, 1.5]
    assert torch.allclose(m[4].weight, torch.tensor([[2.0, -2.0], [1.0, 4.0]]))


def test_output_lambda_percentile_and_input_lambda():
    # outputs of the hand MLP: positive values give the output's own percentile; logits are divided by it
    net = hand_mlp()
    with torch.no_grad():
        out = net(X_MLP)
    pos = out[out > 0].double()
    res = robust_scale(net, dataset(X_MLP), (2,), percentile=100, output_lambda="percentile")
    assert res.output_lambda == pytest.approx(float(pos.max()))
    with torch.no_grad():
        assert torch.allclose(res.module(X_MLP), out / res.output_lambda, atol=1e-6)
    # a fixed input scale: the scaled network expects x / input_lambda
    res = robust_scale(net, dataset(X_MLP), (2,), percentile=100, input_lambda=2.0)
    assert res.input_lambda == 2.0 and res.layer_scales["0"] == pytest.approx((2.0, 4.0))
    with torch.no_grad():
        assert torch.allclose(res.module(X_MLP / 2.0), out, atol=1e-6)
    res = robust_scale(net, dataset(X_MLP), (2,), percentile=100, input_lambda="percentile")
    assert res.input_lambda == pytest.approx(2.0)  # max of the non-zero inputs
    with pytest.raises(ValueError, match="input_lambda"):
        robust_scale(net, dataset(X_MLP), (2,), input_lambda=0.0)


# --------------------------------------------------------------------------------------------------------------------
# Function preservation: with lambda_out = 1 the scaled logits equal the original ones
# --------------------------------------------------------------------------------------------------------------------


def seq_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, 3))


class ResNetlet(nn.Module):
    """conv-ReLU, a basic block with an identity shortcut, one with a strided 1x1 projection shortcut."""

    def __init__(self):
        super().__init__()
        self.stem, self.r0 = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()
        self.c1, self.r1 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.c3, self.r3 = nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()
        self.c4, self.proj, self.r4 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(4, 8, 1, stride=2), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 3)

    def forward(self, x):
        a = self.r0(self.stem(x))
        b = self.r2(self.c2(self.r1(self.c1(a))) + a)  # identity edge a -> r2
        c = self.r4(self.c4(self.r3(self.c3(b))) + self.proj(b))  # add of two weight outputs
        return self.fc(torch.flatten(self.pool(c), 1))


class ConcatNet(nn.Module):
    """Two branches concatenated into one conv: their sites must share lambda."""

    def __init__(self):
        super().__init__()
        self.stem, self.r0 = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()
        self.a, self.ra = nn.Conv2d(4, 3, 3, padding=1), nn.ReLU()
        self.b, self.rb = nn.Conv2d(4, 5, 1), nn.ReLU()
        self.mix, self.rm = nn.Conv2d(8, 6, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        h = self.r0(self.stem(x))
        h = torch.cat([self.ra(self.a(h)), self.rb(self.b(h))], dim=1)
        h = self.rm(self.mix(nn.functional.avg_pool2d(h, 2)))
        return self.fc(h.flatten(1))


def _randomize(net: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.6 + (0.1 if p.dim() == 1 else 0.0))
    return net


CASES = {
    "sequential": (seq_cnn, [["1"], ["4"], ["9"]]),
    "residual": (ResNetlet, [["r0", "r2"], ["r1"], ["r3"], ["r4"]]),
    "concat": (ConcatNet, [["r0"], ["ra", "rb"], ["rm"]]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("as_graph", [False, True])
def test_logits_preserved_exactly(case, as_graph):
    build, groups = CASES[case]
    net = _randomize(build(), seed=1).eval()
    if as_graph:
        net = energy.trace(net)  # an fx.GraphModule, as the ONNX importer produces
    shape = (2, 8, 8)
    calib = torch.rand(96, *shape, generator=torch.Generator().manual_seed(2))
    res = robust_scale(net, dataset(calib), shape, percentile=99.9, batch_size=32)
    assert res.groups == groups
    assert scale_groups(net, shape) == groups
    for group in res.groups:  # one lambda per group, the max of the members' percentiles
        assert len({res.lambdas[s] for s in group}) == 1
        assert res.lambdas[group[0]] == pytest.approx(max(res.percentiles[s] for s in group))
    if len(max(groups, key=len)) > 1:  # the merge matters: the members' own percentiles differ
        big = max(groups, key=len)
        assert len({round(res.percentiles[s], 6) for s in big}) > 1
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = net(x), res.module(x)
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), float((out - ref).abs().max())
        orig, scaled = site_outputs(net, x, shape), site_outputs(res.module, x, shape)
    for name, lam in res.lambdas.items():
        assert torch.allclose(scaled[name], orig[name] / lam, atol=1e-5)
    assert all(torch.isfinite(p).all() for p in res.module.parameters())


def test_shared_residual_lambda_is_the_group_max_and_per_site_scaling_breaks_the_function():
    net = _randomize(ResNetlet(), seed=1).eval()
    shape = (2, 8, 8)
    calib = torch.rand(64, *shape, generator=torch.Generator().manual_seed(2))
    res = robust_scale(net, dataset(calib), shape)
    # a naive per-site scaling (no merge) of the identity block: a carries 1/p(r0), c2 outputs at 1/p(r2)
    p = res.percentiles
    naive = copy.deepcopy(net)
    with torch.no_grad():
        for name, (lin, lout) in {"stem": (1, p["r0"]), "c1": (p["r0"], p["r1"]), "c2": (p["r1"], p["r2"])}.items():
            mod = getattr(naive, name)
            mod.weight.mul_(lin / lout)
            mod.bias.div_(lout)
        x = torch.rand(8, *shape)
        a_naive = naive.r2(naive.c2(naive.r1(naive.c1(naive.r0(naive.stem(x))))) + naive.r0(naive.stem(x)))
        a_true = net.r2(net.c2(net.r1(net.c1(net.r0(net.stem(x))))) + net.r0(net.stem(x)))
    assert not torch.allclose(a_naive * p["r2"], a_true, atol=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# Silent layers, zeros excluded, the streaming percentile, errors
# --------------------------------------------------------------------------------------------------------------------


def test_silent_layer_gets_previous_lambda_with_a_warning():
    net = hand_mlp()
    with torch.no_grad():
        net[2].bias.fill_(-100.0)  # the second ReLU never fires
    with pytest.warns(SilentLayerWarning, match="'3'"):
        res = robust_scale(net, dataset(X_MLP), (2,), percentile=100)
    assert res.percentiles["3"] is None and res.silent == ["3"]
    assert res.lambdas == pytest.approx({"1": 4.0, "3": 4.0})  # lambda of the preceding layer
    assert all(torch.isfinite(p).all() for p in res.module.parameters())
    with torch.no_grad():
        assert torch.allclose(res.module(X_MLP), net(X_MLP), atol=1e-5)
    # a silent first layer falls back to the input's lambda (1)
    net = hand_mlp()
    with torch.no_grad():
        net[0].bias.fill_(-100.0)
    with pytest.warns(SilentLayerWarning, match="'1'"):
        res = robust_scale(net, dataset(X_MLP), (2,), percentile=99.9)
    assert res.lambdas["1"] == 1.0 and res.silent == ["1"]
    assert all(torch.isfinite(p).all() for p in res.module.parameters())


def test_zeros_are_excluded_from_the_percentile():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(200, 10, generator=gen) + 0.1
    x[torch.rand(200, 10, generator=gen) < 0.9] = -1.0  # ~90% of the activations are 0 after the ReLU
    net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(10))
        net[0].bias.zero_()
    act = torch.relu(x)
    nz = act[act > 0].double()
    assert 0.85 < 1 - nz.numel() / act.numel() < 0.95
    for q in (99.9, 50.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = robust_scale(net, dataset(x), (10,), percentile=q, batch_size=64)
        assert res.lambdas["1"] == pytest.approx(float(torch.quantile(nz, q / 100)), rel=1e-9)
    # with the zeros included (sinabs.utils.normalize_weights) the median would be 0
    assert float(torch.quantile(act.double().flatten(), 0.5)) == 0.0


@pytest.mark.parametrize("q", [0.0, 37.5, 99.0, 99.9, 100.0])
def test_streaming_percentile_is_exact(q):
    gen = torch.Generator().manual_seed(5)
    chunks = [torch.relu(torch.randn(n, generator=gen)) for n in (1, 500, 3, 2000, 777)]
    total = sum(c.numel() for c in chunks)
    s = StreamingPercentile(q, total)
    for c in chunks:
        s.update(c)
    allv = torch.cat(chunks)
    nz = allv[allv > 0].double()
    assert s.count == nz.numel()
    assert s.value() == pytest.approx(float(torch.quantile(nz, q / 100)), rel=1e-12, abs=1e-12)
    if q >= 99:
        assert s.buffer.numel() <= s.capacity < 0.02 * total  # memory: only the top of the distribution
    assert StreamingPercentile(q, 10).value() is None


def test_samples_subset_and_notes():
    gen = torch.Generator().manual_seed(6)
    net = _randomize(seq_cnn(), seed=7).eval()
    data = dataset(torch.rand(50, 2, 8, 8, generator=gen))
    res = robust_scale(net, data, (2, 8, 8), samples=20, batch_size=8)
    assert res.samples == 20
    res = robust_scale(net, data, (2, 8, 8), samples=25600)
    assert res.samples == 50 and any("only 50 samples" in n for n in res.notes)


def test_unscalable_graphs_are_refused():
    data = dataset(torch.rand(4, 2, 8, 8))
    with pytest.raises(ScalingError, match="BatchNorm2d"):
        robust_scale(nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU()), data, (2, 8, 8))

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 3, 3)

        def forward(self, x):
            return torch.relu(self.c(x))

    with pytest.raises(ScalingError, match="functional relu"):
        robust_scale(Functional(), data, (2, 8, 8))

    class Offset(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.r = nn.Conv2d(2, 3, 3), nn.ReLU()

        def forward(self, x):
            return self.r(self.c(x)) + 1.0

    with pytest.raises(ScalingError, match="constant"):
        robust_scale(Offset(), data, (2, 8, 8))


# --------------------------------------------------------------------------------------------------------------------
# End to end: a small CNN trained on digits, rate-coded SNN at T = 64
# --------------------------------------------------------------------------------------------------------------------


def test_digits_rate_coded_snn_matches_ann():
    import synopt.data
    from synopt.convert.to_sinabs import to_sinabs
    from synopt.finetune.train import TrainConfig, evaluate, fit
    from synopt.simulate.run import simulate

    splits = synopt.data.load("digits")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10))
    fit(net, splits.train, None, TrainConfig(epochs=15, lr=1e-2, batch_size=64, progress=False))
    ann_acc = evaluate(net, splits.val)
    assert ann_acc > 0.9

    res = robust_scale(net, splits.train, splits.input_shape)
    assert res.samples == len(splits.train) and res.encoding == "rate"
    with torch.no_grad():
        x = torch.stack([splits.val[i][0] for i in range(32)])
        assert torch.allclose(res.module(x), net(x), atol=1e-4)
    snn = to_sinabs(res.module, encoding=res.encoding)
    sim = simulate(snn, splits.val, 64, splits.input_shape, batch_size=180, progress=False)
    assert sim.encoding == "rate" and not sim.silent_layers
    assert abs(sim.accuracy - ann_acc) <= 0.04, (ann_acc, sim.accuracy)
    # rates stay below ~1 spike per step: the point of the scaling
    assert max(sim.firing_rate.values()) < 1.0
