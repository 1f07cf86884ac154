"""synopt.energy against hand-computed fan-outs and an independent brute-force count."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from synopt import energy
from synopt.energy import AccountingError, ActivityRecorder, analyze, omega, synops


def brute_force_psi(layer: nn.Module, in_shape) -> torch.Tensor:
    """Structural fan-out by an independent method: nonzeros per input column of the layer's Jacobian
    with strictly positive random weights (so no accidental cancellation)."""
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
        if getattr(layer, "bias", None) is not None:
            layer.bias.zero_()
    x = torch.zeros((1, *in_shape), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: layer(t).flatten(), x)  # [out, 1, *in]
    return (jac != 0).sum(0)[0].to(torch.float64)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=0),
    dict(kernel_size=5, padding=2, dilation=1),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=(3, 1), stride=(1, 2), padding=(1, 0)),
])
def test_conv_psi_matches_brute_force(kw):
    conv = nn.Conv2d(2, 3, bias=False, **kw)
    model = nn.Sequential(nn.ReLU(), conv)
    acc = analyze(model, (2, 7, 6))
    expected = brute_force_psi(nn.Conv2d(2, 3, bias=False, **kw), (2, 7, 6))
    assert torch.equal(acc.layer("0").psi, expected)


def test_conv_padding_stride_by_hand():
    # 3x3 conv, stride 2, padding 1 on 4x4 -> outputs centred on rows/cols 0 and 2.
    # Row r is covered by 1, 2, 1, 1 output rows for r = 0..3; same for columns; 3 output channels.
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 3, 3, stride=2, padding=1, bias=False))
    psi = analyze(model, (1, 4, 4)).layer("0").psi[0]
    cover = torch.tensor([1.0, 2.0, 1.0, 1.0])
    assert torch.equal(psi, 3 * torch.outer(cover, cover))
    # padding 1, stride 1, 3x3: corners 4, edges 6, interior 9 synapses per output channel
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 2, 3, padding=1, bias=False))
    psi = analyze(model, (1, 4, 4)).layer("0").psi[0]
    assert psi[0, 0] == 8 and psi[0, 1] == 12 and psi[1, 1] == 18 and psi.sum() == 2 * (4 * 4 + 8 * 6 + 4 * 9)


def test_avgpool_then_conv_is_sum_pool_exact_and_layer_average_eq7():
    model = nn.Sequential(nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(3, 5, 3, padding=1, bias=False))
    exact = analyze(model, (3, 4, 4))
    # every 2x2 pooled pixel reaches all 2x2 outputs of the 3x3/p1 conv, 5 channels: each spike -> 20 synapses
    assert torch.all(exact.layer("0").psi == 20)
    eq7 = analyze(model, (3, 4, 4), convention="eq7")
    # Eq. 7: W'H'/(WH) * C' * k^2 = (4/16) * 5 * 9 = 11.25 for every neuron
    assert torch.allclose(eq7.layer("0").psi, torch.full((3, 4, 4), 11.25, dtype=torch.float64))
    assert exact.macs == eq7.macs == 5 * 2 * 2 * 3 * 9


def test_flatten_linear_and_global_pooling():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 7))
    acc = analyze(model, (1, 3, 3))
    assert torch.all(acc.layer("1").psi == 7)
    assert acc.macs == 2 * 9 * 1 + 7 * 18
    model = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    exact = analyze(model, (4, 5, 5))
    assert torch.all(exact.layer("0").psi == 10)
    eq7 = analyze(model, (4, 5, 5), convention="eq7")
    assert torch.allclose(eq7.layer("0").psi, torch.full((4, 5, 5), 10 / 25, dtype=torch.float64))


def test_adaptive_pool_with_overlapping_bins():
    # 5 -> 2 bins: [0,3) and [2,5); row/col 2 lies in both bins
    model = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(4, 3))
    psi = analyze(model, (1, 5, 5)).layer("0").psi[0]
    nb = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0])
    assert torch.equal(psi, 3 * torch.outer(nb, nb))


def test_grouped_conv():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 6, 1, groups=2, bias=False))
    acc = analyze(model, (4, 3, 3))
    assert torch.all(acc.layer("0").psi == 3)  # each input channel feeds the 3 outputs of its group
    assert acc.macs == 6 * 9 * 2


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.ReLU()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.b = nn.ReLU()

    def forward(self, x):
        s = self.a(x)
        return self.b(self.conv(s) + s)


def test_residual_identity_edge_is_one_synapse_per_spike():
    acc = analyze(Residual(), (2, 3, 3))
    conv_only = analyze(nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1, bias=False)), (2, 3, 3))
    assert torch.equal(acc.layer("a").psi, conv_only.layer("0").psi + 1)
    assert sorted(acc.layer("a").consumers) == ["b", "conv"]


class TwoConsumers(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.c1 = nn.Conv2d(2, 3, 1, bias=False)
        self.c2 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.out = nn.ReLU()

    def forward(self, x):
        s = self.act(x)
        return self.out(torch.cat([self.c1(s), self.c2(s)], 1))


def test_one_neuron_two_consumers_counts_both():
    acc = analyze(TwoConsumers(), (2, 3, 3))
    psi = acc.layer("act").psi[0]
    cover = torch.tensor([2.0, 3.0, 2.0])
    assert torch.equal(psi, 3 + 4 * torch.outer(cover, cover))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.r1 = nn.ReLU()
        self.r2 = nn.ReLU()
        self.conv = nn.Conv2d(5, 4, 1, bias=False)

    def forward(self, x):
        return self.conv(torch.cat([self.r1(x[:, :2]), self.r2(x[:, 2:])], dim=1))


def test_concat_routes_each_part():
    acc = analyze(Concat(), (5, 2, 2))
    assert acc.layer("r1").shape == (2, 2, 2) and acc.layer("r2").shape == (3, 2, 2)
    assert torch.all(acc.layer("r1").psi == 4) and torch.all(acc.layer("r2").psi == 4)


def test_functional_relu_sites_and_input_pseudo_site():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3, bias=False)
            self.fc = nn.Linear(2 * 2 * 2, 3)

        def forward(self, x):
            return self.fc(F.relu(self.c(x)).flatten(1))

    acc = analyze(Fn(), (1, 4, 4))
    assert [site.name for site in acc.layers] == ["relu"]
    assert torch.all(acc.layers[0].psi == 3)
    # the input feeds a 3x3 valid conv: corner pixels reach 1 output position x 2 channels
    assert acc.input_layer.psi[0, 0, 0] == 2 and acc.input_layer.psi[0, 1, 1] == 8


def test_synops_gradient_is_psi_and_matches_structural_conv():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False))
    acc = analyze(model, (2, 5, 5))
    s = torch.rand(4, 2, 5, 5).round().requires_grad_(True)
    total = synops(acc, {"0": s}, n_samples=4)
    total.backward()
    assert torch.allclose(s.grad * 4, acc.layer("0").psi.float().expand_as(s))
    ones_conv = F.conv2d(s.detach(), torch.ones(3, 2, 3, 3), None, 2, 1)
    assert torch.isclose(total, ones_conv.sum() / 4)


def test_omega_all_firing_and_p():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 5))
    acc = analyze(model, (1, 3, 3))
    # d = 18 and 36 neurons; psi = 4 and 5
    assert acc.omega_all_firing("total") == 54
    assert acc.omega_all_firing("balance") == 2
    assert acc.omega_all_firing("syn") == 18 * 4 + 36 * 5
    assert acc.omega_all_firing("syn", p=2) == (18 * 4 + 36 * 5) / 2
    s1 = torch.tensor([[0.0, 1.0]]).repeat(1, 9).view(1, 2, 3, 3)
    val = omega(acc, {"1": s1}, kind="balance", p=2)
    assert torch.isclose(val, torch.tensor(9 / 18 / 2))
    with pytest.raises(ValueError, match="p must be"):
        omega(acc, {"1": s1}, p=0.5)
    with pytest.raises(ValueError, match="unknown penalty"):
        omega(acc, {"1": s1}, kind="l1")


def test_activity_recorder_matches_manual_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(2, 3, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(3, 2))
    acc = analyze(model, (1, 6, 6))
    x = torch.randn(5, 1, 6, 6)
    with ActivityRecorder(model, acc) as rec:
        model(x)
    a1 = F.relu(model[0](x))
    manual = (F.conv2d(F.avg_pool2d(a1, 2) * 4, torch.ones(3, 2, 3, 3)).sum()
              + F.relu(model[3](F.avg_pool2d(a1, 2))).sum() * 2) / 5
    assert torch.isclose(rec.synops(5), manual.to(rec.synops(5).dtype), rtol=1e-5)
    rates = energy.firing_rate(acc, rec.activity, n_samples=5)
    assert set(rates) == {"1", "4"}


def test_shared_activation_module_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.c = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.relu(self.c(self.relu(x)))

    acc = analyze(Shared(), (1, 2, 2))
    assert len(acc.layers) == 2  # two call sites, two layers of neurons
    with pytest.raises(AccountingError, match="several call sites"):
        ActivityRecorder(Shared(), acc)


def test_unsupported_op_names_the_node():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.r = nn.ReLU()
            self.up = nn.Upsample(scale_factor=2)
            self.c = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.c(self.up(self.r(x)))

    with pytest.raises(AccountingError, match="'up'.*Upsample"):
        analyze(Bad(), (1, 2, 2))


def test_bad_inputs():
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="convention"):
        analyze(model, (1, 4, 4), convention="fast")
    with pytest.raises(ValueError, match="positive"):
        analyze(model, (1, 0, 4))
    with pytest.raises(AccountingError, match="does not run"):
        analyze(model, (2, 4, 4))
    with pytest.raises(AccountingError, match="no activation sites"):
        analyze(nn.Sequential(nn.Conv2d(1, 1, 1)), (1, 2, 2))


def test_sinabs_layers_are_sites():
    import sinabs.layers as sl

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), sl.IAFSqueeze(batch_size=1),
                          sl.SumPool2d(2), nn.Conv2d(2, 3, 3, padding=1, bias=False), sl.IAFSqueeze(batch_size=1),
                          nn.Flatten(), nn.Linear(12, 4, bias=False))
    acc = analyze(model, (1, 4, 4))
    assert [site.kind for site in acc.layers] == ["IAFSqueeze", "IAFSqueeze"]
    assert torch.all(acc.layer("1").psi == 12)  # sum pool -> 2x2 map, 3x3/p1 conv reaches all 4 x 3 channels
    assert torch.all(acc.layer("4").psi == 4)


def test_energy_models():
    em = energy.get_energy_model()
    assert em.e_ac_pj == 0.9 and em.e_mac_pj == 4.6
    assert em.snn_joules(1e6) == pytest.approx(0.9e-6)
    assert em.ann_joules(1e6) == pytest.approx(4.6e-6)
    chip = energy.get_energy_model("mychip", e_ac_pj=12.5)
    assert chip.snn_joules(2) == pytest.approx(25e-12)
    with pytest.raises(ValueError, match="unknown energy model"):
        energy.get_energy_model("7nm")
    with pytest.raises(ValueError, match="positive"):
        energy.get_energy_model("x", e_ac_pj=-1)
    mac_only = energy.get_energy_model(e_mac_pj=1.0)  # --e-mac alone: the named model's E_AC, the given E_MAC
    assert (mac_only.e_ac_pj, mac_only.e_mac_pj) == (0.9, 1.0)
    with pytest.raises(ValueError, match="--e-mac .* must be positive, got 0"):
        energy.get_energy_model(e_mac_pj=0.0)


def test_ops_after_the_last_weight_layer_are_ignored():
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 3), nn.Sigmoid(), nn.Upsample(scale_factor=2))
    acc = analyze(model, (2, 4))
    assert torch.all(acc.layer("0").psi == 3)


def test_analyze_inside_no_grad():
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        acc = analyze(model, (4,))
    assert torch.all(acc.layer("0").psi == 3)


def test_explicit_zero_padding_before_conv():
    padded = nn.Sequential(nn.ReLU(), nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(1, 2, 3, bias=False))
    reference = nn.Conv2d(1, 2, 3, bias=False)

    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.r = nn.ReLU()
            self.c = reference

        def forward(self, x):
            return self.c(F.pad(self.r(x), (1, 0, 1, 0)))

    a = analyze(padded, (1, 4, 4)).layer("0").psi
    b = analyze(Ref(), (1, 4, 4)).layer("r").psi
    assert torch.equal(a, b)
    # asymmetric pad (left/top 1): 3x3 valid conv over the 5x5 padded map -> 3x3 outputs
    cover = torch.tensor([2.0, 3.0, 2.0, 1.0])  # rows 0..3 of the original map are covered 2,3,2,1 times
    assert torch.equal(a[0], 2 * torch.outer(cover, cover))


@pytest.mark.parametrize("pool, shape", [
    (nn.AvgPool2d(2, ceil_mode=True), (1, 5, 5)),
    (nn.MaxPool2d(2, ceil_mode=True), (1, 5, 5)),
    (nn.AvgPool2d(3, 2, 1, ceil_mode=True), (1, 6, 6)),
    (nn.AvgPool1d(2, ceil_mode=True), (1, 5)),
    (nn.AvgPool3d(2, ceil_mode=True), (1, 3, 3, 3)),
    (nn.AvgPool2d(3, 2, 1), (1, 4, 4)),
])
def test_pooling_fan_out_matches_a_brute_force_count(pool, shape):
    """psi of a neuron before a pool = the pooled positions whose window holds it (then x 1 for the 1x1 conv after).
    Brute force: the non-zero entries of d(pool output)/d(input), one output at a time. ceil_mode windows that
    overhang the input hold only the neurons they cover (a sum pool as avg x k^2 over-counted them: 36 vs 25)."""
    dims = len(shape) - 1
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    avg = pool if not isinstance(pool, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) else \
        {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims](pool.kernel_size, pool.stride, pool.padding,
                                                                  ceil_mode=pool.ceil_mode)
    x = torch.ones(1, *shape, requires_grad=True)
    y = avg(x)
    brute = 0
    for i in range(y.numel()):
        (g,) = torch.autograd.grad(y.flatten()[i], x, retain_graph=True)
        brute += int((g != 0).sum())
    model = nn.Sequential(conv(1, 1, 1), nn.ReLU(), pool, conv(1, 1, 1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(y.numel(), 1))
    acc = energy.analyze(model, shape)
    assert [layer.synapses for layer in acc.layers] == [brute, y.numel()]
