"""Direct route: single-step neurons, surrogates, penalties (Table 1, Theorem 3.4), λ schedule, weight decay groups,
BN -> threshold folding, the T = 1 sinabs export and the `synopt finetune --direct` command."""

import json
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from synopt import data, energy, zoo
from synopt.cli import main
from synopt.finetune.direct import (build_snn, direct_metrics, export_sinabs, fold_thresholds, init_from_ann,
                                    load_folded, load_snn, measure, preset, save_snn)
from synopt.finetune.neuron import SURROGATES, SingleStepNeuron, ThresholdNeuron, heaviside, neuron_factory
from synopt.finetune.penalty import Penalty, SpikeRecorder, scheduled_lambda, weight_decay_groups
from synopt.finetune.train import TrainConfig, fit, make_optimizer
from synopt.convert.to_sinabs import to_sinabs
from synopt.simulate.run import simulate

torch.set_num_threads(1)


# ---- surrogates ------------------------------------------------------------------------------------------------------

def _sig(x):
    return 1 / (1 + math.exp(-x))


def _formula(name, u, u_th, h):
    """The paper formulas written out independently of the implementation."""
    if name == "s2nn":  # Eq. 23 of 004_* / Eq. 3-5 of 000_*
        if u >= u_th:
            return 1 / (h["tau"] * u)
        s = 1 / (1 + math.exp((-u + u_th) / h["alpha"]))
        return s * (1 - s) / h["alpha"]
    if name == "pwl":  # Eq. 23 of 000_*
        return max(1 - abs(u - u_th), 0)
    if name == "sigmoid":  # Eq. 24 of 000_*
        s = _sig((u - u_th) / h["alpha"])
        return s * (1 - s) / h["alpha"]
    if name == "fast_sigmoid":  # Eq. 24 of 004_*
        return (1 + h["beta0"] * abs(u - u_th)) ** -2
    if name == "slayer":  # Eq. 25 of 004_*
        return h["alpha1"] * math.exp(-h["beta1"] * abs(u - u_th))
    if name in ("ste_s", "ste_b"):  # STE of H at the threshold (Table 3 of 004_*)
        return 1.0 if abs(u - u_th) <= 1 else 0.0
    raise KeyError(name)


CUSTOM = {"s2nn": {"alpha": 0.3, "tau": 0.8}, "sigmoid": {"alpha": 0.2}, "fast_sigmoid": {"beta0": 2.5},
          "slayer": {"alpha1": 0.7, "beta1": 1.5}, "pwl": {}, "ste_s": {}, "ste_b": {}}


@pytest.mark.parametrize("name", list(SURROGATES))
@pytest.mark.parametrize("custom", [False, True])
def test_surrogate_backward_equals_formula(name, custom):
    hyper = CUSTOM[name] if custom else {}
    neuron = SingleStepNeuron(name, **hyper)
    expected_th = 0.0 if name == "ste_b" else 1.0  # Table 3 of 004_*
    assert neuron.u_th == expected_th
    h = {**SURROGATES[name].defaults, **hyper}
    grid = torch.linspace(-3, 4, 1401, dtype=torch.float64)
    grid = torch.cat([grid, torch.tensor([expected_th, expected_th - 1, expected_th + 1], dtype=torch.float64)])
    u = grid.clone().requires_grad_(True)
    s = neuron(u)
    (g,) = torch.autograd.grad(s.sum(), u)
    want = torch.tensor([_formula(name, float(v), expected_th, h) for v in grid], dtype=torch.float64)
    assert torch.allclose(g, want, rtol=1e-12, atol=1e-15)
    fired = grid >= expected_th
    if name == "ste_b":  # {±1} output
        assert torch.equal(s.detach(), torch.where(fired, 1.0, -1.0).double())
        assert torch.equal(neuron.spikes(s.detach()), fired.double())
    else:
        assert torch.equal(s.detach(), fired.double())


def test_default_hyperparameters_follow_the_papers():
    assert SingleStepNeuron("s2nn").hyper == {"alpha": 0.25, "tau": 0.6}  # Table 6 of 000_*, CNN7 / Adam
    assert SingleStepNeuron("sigmoid").hyper == {"alpha": 0.45}
    assert SingleStepNeuron("slayer").hyper == {"alpha1": 1.0, "beta1": 1.0}  # App. A of 004_*
    # s2nn at the threshold: 1/tau (= 1 with tau = 1: the STE's value, 004_* §3.3)
    u = torch.tensor([1.0], requires_grad=True)
    (g,) = torch.autograd.grad(heaviside(u, "s2nn", tau=1.0).sum(), u)
    assert g.item() == 1.0
    # the literal reading of STE-s (window [-1, 1] of u itself) is available as center=0
    u = torch.tensor([-0.5, 1.5], requires_grad=True)
    (g,) = torch.autograd.grad(heaviside(u, "ste_s", center=0.0).sum(), u)
    assert g.tolist() == [1.0, 0.0]


def test_factory_validates_and_builds_fresh_modules():
    make = neuron_factory("pwl")
    a, b = make(), make()
    assert a is not b and a.synopt_neuron and energy.is_activation_site(a)
    with pytest.raises(ValueError, match="unknown surrogate"):
        neuron_factory("relu")
    with pytest.raises(ValueError, match="no hyperparameter"):
        neuron_factory("pwl", alpha=0.3)
    with pytest.raises(ValueError, match="positive"):
        neuron_factory("s2nn", tau=0.0)
    with pytest.raises(ValueError, match="u_th > 0"):
        SingleStepNeuron("s2nn", u_th=0.0)


# ---- penalties: Table 1, Theorem 3.4, Eq. 18, Eq. 21 ---------------------------------------------------------------

def test_single_step_neurons_are_sites_table1():
    act = neuron_factory("s2nn")
    vgg = energy.analyze(zoo.build("vgg11", act=act), (3, 32, 32))
    assert len(vgg.layers) == 10 and all(layer.kind == "SingleStepNeuron" for layer in vgg.layers)
    assert vgg.omega_all_firing("total") == 249_856 and vgg.omega_all_firing("balance") == 10
    res = zoo.build("resnet18", act=act)
    acc = energy.analyze(res, (3, 32, 32))
    assert acc.omega_all_firing("total") == 671_744 and acc.omega_all_firing("balance") == 20
    assert energy.analyze(res, (3, 32, 32), convention="eq7").omega_all_firing("syn") == 553_730_048


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def trained(digits):
    """digitsnet with single-step neurons after one short epoch (penalised a little)."""
    torch.manual_seed(0)
    net = build_snn("digitsnet", digits.input_shape, 10)
    account = energy.analyze(net, digits.input_shape)
    pen = Penalty(account, "syn", 1, 1.0, epochs=2)
    with SpikeRecorder(net, account) as rec:
        fit(net, digits.train, None, TrainConfig(epochs=2, batch_size=32, lr=3e-3, progress=False),
            extra_loss=pen.extra_loss(rec), on_epoch_start=pen.set_epoch)
    return net.eval()


@pytest.mark.parametrize("p", [1, 2])
def test_theorem_3_4_penalty_equals_energy(p, digits, trained):
    """p T E_AC E[Omega_syn] = E_SNN on the same batch (T = 1), in total and per layer."""
    account = energy.analyze(trained, digits.input_shape)
    em = energy.ENERGY_MODELS["cmos45nm"]
    x = torch.stack([digits.test[i][0] for i in range(64)])
    with torch.no_grad(), SpikeRecorder(trained, account, detach=True) as rec:
        trained(x)
    act = rec.activity
    e_snn = em.e_ac_pj * float(energy.synops(account, act, n_samples=64))
    lhs = p * 1 * em.e_ac_pj * float(energy.omega(account, act, "syn", p, n_samples=64))
    assert e_snn > 0 and lhs == pytest.approx(e_snn, rel=1e-12)
    for name, s in act.items():
        assert p * em.e_ac_pj * float(energy.omega(account, {name: s}, "syn", p, 64)) == pytest.approx(
            em.e_ac_pj * float(energy.synops(account, {name: s}, 64)), rel=1e-12)
    m = direct_metrics(measure(trained, account, TensorDataset(x, torch.zeros(64, dtype=torch.long))), account, em)
    assert m["e_snn_pj"] == pytest.approx(e_snn, rel=1e-12) and m["omega_syn"] == pytest.approx(e_snn / 0.9)


def test_normalised_penalty_eq21_and_eq18_backward():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), SingleStepNeuron(),
                        nn.Flatten(), nn.Linear(4 * 6 * 6, 3, bias=False))
    account = energy.analyze(net, (1, 6, 6))
    x = torch.randn(8, 1, 6, 6)
    for kind in ("syn", "total", "balance"):
        for p in (1, 2):
            pen = Penalty(account, kind, p, lambda_norm=64.0, epochs=1)
            assert pen.omega_one == account.omega_all_firing(kind, p)
            with SpikeRecorder(net, account) as rec:
                net(x)
            norm = pen.normalised(rec.activity, 8)
            raw = energy.omega(account, rec.activity, kind, p, 8)
            # lambda' = lambda / Omega(1)
            assert float(64.0 * norm.detach()) == pytest.approx(float(pen.lambda_raw * raw.detach()))
    # Eq. 18: with p = 2 no gradient reaches silent neurons; with p = 1 they get the surrogate
    grads = {}
    for p in (1, 2):
        u = (torch.randn(8, 4, 6, 6) * 2).requires_grad_(True)
        neuron = SingleStepNeuron()
        s = neuron(u)
        pen_val = energy.omega(account, {"2": s}, "syn", p, 8)
        (grads[p],) = torch.autograd.grad(pen_val, u)
        silent = u.detach() < 1
        if p == 2:
            assert torch.all(grads[p][silent] == 0) and torch.all(grads[p][~silent] > 0)
        else:
            assert torch.all(grads[p][silent] > 0)


def test_linear_lambda_schedule():
    assert [scheduled_lambda(8.0, e, 4) for e in range(4)] == [2.0, 4.0, 6.0, 8.0]
    assert [scheduled_lambda(8.0, e, 4, "constant") for e in range(4)] == [8.0] * 4
    with pytest.raises(ValueError):
        scheduled_lambda(1.0, 4, 4)
    with pytest.raises(ValueError, match="schedule"):
        scheduled_lambda(1.0, 0, 4, "cosine")


def test_weight_decay_param_groups():
    net = zoo.build("digitsnet", act=neuron_factory())
    bn_params = {id(p) for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    for bn_decay in (False, True):
        groups = weight_decay_groups(net, 1e-4, bn_decay)
        ids = [id(p) for g in groups for p in g["params"]]
        assert sorted(ids) == sorted(id(p) for p in net.parameters())  # every parameter exactly once
        assert {id(p) for p in groups[1]["params"]} == bn_params
        assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == (1e-4 if bn_decay else 0.0)
        for opt_name in ("adam", "sgd"):
            opt = make_optimizer(groups, TrainConfig(optimizer=opt_name, weight_decay=1e-4))
            assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 1e-4 if bn_decay else 0.0]
    with pytest.raises(ValueError):
        weight_decay_groups(net, -1.0, False)


def test_presets_table6():
    p = preset("cnn7")
    assert (p["lr"], p["weight_decay"], p["hyper"], p["epochs"], p["batch_size"]) == (
        1e-3, 1e-4, {"alpha": 0.25, "tau": 0.6}, 150, 100)
    assert preset("vgg11", "sgd")["hyper"] == {"alpha": 0.35, "tau": 0.8}
    assert preset("resnet18")["hyper"] == {"alpha": 0.35, "tau": 1.0}
    assert preset("cnn7", "adam", "sigmoid")["lr"] == 1e-2 and preset("cnn7", "adam", "sigmoid")["hyper"] == {
        "alpha": 0.45}
    assert preset("cnn7", "adam", "pwl")["hyper"] == {} and preset("cnn7", "adam", "pwl")["weight_decay"] == 1e-6


# ---- BN folded into thresholds (Eq. 27 of 004_*) ------------------------------------------------------------------

def _spikes(net, x, shape):
    account = energy.analyze(net, shape)
    with torch.no_grad(), SpikeRecorder(net, account, detach=True) as rec:
        out = net(x)
    return out, dict(rec.activity)


def _randomise_bn(net, gen, zero_beta_fire=True):
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.1)
                m.weight.copy_(torch.randn(c, generator=gen))  # about half negative
                m.bias.copy_(torch.randn(c, generator=gen) + 1)
                m.weight[0] = 0.0  # gamma = 0: a constant neuron
                m.bias[0] = 1.5 if zero_beta_fire else 0.2
                if c > 2:
                    m.weight[1] = 0.0
                    m.bias[1] = 0.5 if zero_beta_fire else 3.0


def test_fold_negative_and_zero_gamma_identical_spikes():
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6), SingleStepNeuron(), nn.Dropout(0.2),
        nn.Conv2d(6, 5, 3, stride=2, bias=False), nn.BatchNorm2d(5), SingleStepNeuron("pwl"), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(5 * 1 * 1 * 1, 7), nn.BatchNorm1d(7), SingleStepNeuron("slayer"),
        nn.Linear(7, 3, bias=False))
    _randomise_bn(net, gen)
    net.eval()
    fold = fold_thresholds(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fold.net.modules())
    assert fold.negated and fold.constant and not fold.polarity
    assert set(fold.negated) == {"0", "4", "9"}
    x = torch.randn(500, 2, 6, 6) * 2
    out_a, s_a = _spikes(net, x, (2, 6, 6))
    out_b, s_b = _spikes(fold.net, x, (2, 6, 6))
    assert torch.equal(out_a.argmax(1), out_b.argmax(1))
    for name in s_a:
        assert torch.equal(s_a[name], s_b[name]), name
    # gamma = 0 channels are constant: channel 0 always fires, channel 1 never (beta 1.5 / 0.5 vs u_th 1)
    assert bool(s_b["2"][:, 0].all()) and not bool(s_b["2"][:, 1].any())
    # the input network is untouched
    assert isinstance(net[1], nn.BatchNorm2d) and isinstance(net[2], SingleStepNeuron)


def test_fold_after_residual_add_keeps_polarity_and_exports_with_negated_synapses():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(3)
            self.act = SingleStepNeuron()
            self.out = nn.Conv2d(3, 2, 1, bias=False)

        def forward(self, x):
            y = self.conv(x) + x  # the BN reads a sum: no exclusive weight layer to negate
            return self.out(self.act(self.bn(y))).mean((2, 3))

    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    net = Block()
    _randomise_bn(net, gen, zero_beta_fire=False)
    with torch.no_grad():
        net.bn.weight[2] = -0.7
    net.eval()
    fold = fold_thresholds(net)
    assert "act" in fold.polarity and fold.polarity["act"].flatten().tolist() == [1, 1, -1]
    x = torch.randn(300, 3, 5, 5)
    out_a, s_a = _spikes(net, x, (3, 5, 5))
    out_b, s_b = _spikes(fold.net, x, (3, 5, 5))
    assert torch.equal(s_a["act"], s_b["act"]) and torch.equal(out_a.argmax(1), out_b.argmax(1))
    assert 0 < float(s_b["act"][:, 2].mean()) < 1  # the inverted channel fires on some inputs, not all
    # the IF twin integrates -x against -θ' on channel 2 (every synapse into it negated): the same spikes
    snn = export_sinabs(fold)
    if_act = snn.body.act
    assert if_act.input_sign.flatten().tolist() == [1, 1, -1]
    seen = {}
    hook = if_act.register_forward_hook(lambda _m, _i, o: seen.setdefault("act", o.detach().clone()))
    with torch.no_grad():
        current, _ = snn(x.unsqueeze(1))
    hook.remove()
    assert torch.equal(seen["act"], s_b["act"])
    torch.testing.assert_close(current[:, 0], out_b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="±1"):
        to_sinabs(fold.net, encoding="count", thresholds=dict(fold.thresholds), polarity={"act": torch.zeros(3)})
    with pytest.raises(ValueError, match="unknown sites"):
        to_sinabs(fold.net, encoding="count", polarity={"nope": torch.ones(3)})


def test_fold_and_t1_sinabs_export_on_digits(digits, trained):
    shape = digits.input_shape
    account = energy.analyze(trained, shape)
    with torch.no_grad():  # make one channel of each BN negative: exercised on real data too
        for m in trained.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight[3] = -m.weight[3].abs()
    m_bn = measure(trained, account, digits.test)
    fold = fold_thresholds(trained)
    assert fold.negated
    f_account = energy.analyze(fold.net, shape)
    m_fold = measure(fold.net, f_account, digits.test)
    assert torch.equal(m_bn.predictions, m_fold.predictions)
    assert m_bn.synops_per_layer == m_fold.synops_per_layer and m_bn.accuracy == m_fold.accuracy
    x = torch.stack([digits.test[i][0] for i in range(len(digits.test))])
    _, s_a = _spikes(trained, x, shape)
    _, s_b = _spikes(fold.net, x, shape)
    assert all(torch.equal(s_a[k], s_b[k]) for k in s_a)
    # T = 1 sinabs export: the same simulator and accounting as converted networks
    snn = export_sinabs(fold)
    assert snn.readout == "current"
    res = simulate(snn, digits.test, 1, shape, batch_size=64, progress=False)
    assert res.accuracy == m_fold.accuracy
    assert res.synops == m_fold.synops
    assert res.synops_per_layer == pytest.approx(m_fold.synops_per_layer, rel=0, abs=0)
    assert res.firing_rate == pytest.approx(direct_metrics(m_fold, f_account)["firing_rate"], rel=1e-12)


def test_threshold_neuron_and_fold_errors():
    n = ThresholdNeuron(torch.tensor([0.5, -1.0]))
    assert n(torch.tensor([[0.5, -2.0]])).tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match="±1"):
        fold_thresholds(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), SingleStepNeuron("ste_b"),
                                      nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no single-step neurons"):
        fold_thresholds(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


def test_init_from_ann_reaches_the_target_rate(digits):
    torch.manual_seed(3)
    ann = zoo.build("digitsnet")
    snn = build_snn("digitsnet", digits.input_shape, 10)
    calib = [torch.stack([digits.train[i][0] for i in range(k, k + 128)]) for k in (0, 128)]
    report = init_from_ann(snn, ann.state_dict(), calib, init_rate=0.2)
    assert set(report["sites"]) == {"2", "6"}
    account = energy.analyze(snn, digits.input_shape)
    with torch.no_grad(), SpikeRecorder(snn.eval(), account, detach=True) as rec:
        rates = {}
        for x in calib:
            snn(x)
            for k, s in rec.activity.items():
                rates.setdefault(k, []).append(float(s.mean()))
    for k, r in rates.items():
        assert sum(r) / len(r) == pytest.approx(0.2, abs=0.02), k
    # conv weights are the ANN's
    assert torch.equal(snn[0].weight, ann[0].weight)
    with pytest.raises(ValueError, match="does not fit"):
        init_from_ann(build_snn("digitsnet", (1, 8, 8), 5), ann.state_dict())


# ---- CLI ------------------------------------------------------------------------------------------------------------

def test_cli_finetune_direct_digits(tmp_path, capsys):
    torch.save({"state_dict": zoo.build("digitsnet").state_dict()}, tmp_path / "ann.pt")
    run_dir = tmp_path / "run"
    args = ["finetune", "--direct", "--model", "digitsnet", "--dataset", "digits", "--from-ann",
            str(tmp_path / "ann.pt"), "--surrogate", "s2nn", "--penalty", "syn", "--p", "1", "--lambda-norm", "4",
            "--weight-decay", "1e-4", "--bn-decay", "--epochs", "2", "--out", str(run_dir), "--quiet",
            "--baseline", "1e-8"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "E_Full/E_Method" in text and "sinabs T=1" in text
    for f in ("config.json", "metrics.json", "layers.txt", "firing_rate.png", "energy_per_layer.png", "model.pt",
              "summary.md", "snn/spec.json", "snn/weights.pt", "checkpoints/last.pt", "checkpoints/epoch001.pt",
              "checkpoints/epoch002.pt"):
        assert (run_dir / f).is_file(), f
    m = json.loads((run_dir / "metrics.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())["config"]
    assert cfg["lambda_norm"] == 4.0 and cfg["bn_decay"] and cfg["resolved"]["epochs"] == 2
    assert [row["lambda"] for row in m["history"]] == [2.0, 4.0]  # linear schedule
    assert m["weight_decay"]["groups"][1]["weight_decay"] == 1e-4
    assert m["penalty"]["omega_one"] == 209_920 and m["penalty"]["lambda_raw"] == pytest.approx(4 / 209_920)
    for key in ("accuracy", "e_snn_j", "e_snn_over_baseline", "dead_rate", "R", "firing_rate", "e_snn_per_layer_j",
                "e_full_over_method"):
        assert key in m
    assert m["e_snn_over_baseline"] == pytest.approx(m["e_snn_j"] / 1e-8)
    assert m["folded"]["prediction_mismatches"] == 0 and m["sinabs_t1"]["accuracy_equal"]
    assert m["sinabs_t1"]["synops"] == pytest.approx(m["synops"], rel=1e-9)
    # the exported folder reloads into the same network
    spec = json.loads((run_dir / "snn" / "spec.json").read_text())
    assert spec["route"] == "direct" and spec["timesteps"] == 1 and spec["readout"] == "current"
    snn, _ = load_snn(run_dir / "snn")
    res = simulate(snn, data.load("digits").test, 1, (1, 8, 8), progress=False)
    assert res.accuracy == m["sinabs_t1"]["accuracy"] and res.synops == m["sinabs_t1"]["synops"]
    folded, _, thresholds = load_folded(run_dir / "snn")
    assert set(thresholds) == {"2", "6"}
    # `synopt simulate` reloads the direct route's folder with the same simulator and accounting
    assert main(["simulate", str(run_dir / "snn"), "-T", "1", "--quiet", "--json", str(tmp_path / "sim.json")]) == 0
    sim = json.loads((tmp_path / "sim.json").read_text())
    assert sim["accuracy"] == m["sinabs_t1"]["accuracy"] and sim["synops"] == m["sinabs_t1"]["synops"]
    # same configuration again: resumes from the last checkpoint (no more training) and gives the same numbers
    assert main(args) == 0
    capsys.readouterr()
    assert json.loads((run_dir / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    # another ANN in the same file: another run, refused instead of resumed from this one's checkpoints
    torch.manual_seed(1)
    torch.save({"state_dict": zoo.build("digitsnet").state_dict()}, tmp_path / "ann.pt")
    assert main(args) == 2
    assert "differs in from_ann_sha256" in capsys.readouterr().err
    # baseline from a run folder
    assert main(args[:-5] + ["--out", str(tmp_path / "run2"), "--quiet", "--baseline", str(run_dir),
                             "--epochs", "1", "--lambda-norm", "0"]) == 0
    m2 = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert m2["e_baseline_j"] == m["e_snn_j"]


@pytest.mark.parametrize("extra, message", [
    ([], "only --direct"),
    (["--direct", "--lambda-norm", "-1"], "--lambda-norm"),
    (["--direct", "--p", "0.5"], "--p must be >= 1"),
    (["--direct", "--from-ann", "/nonexistent.pt"], "does not exist"),
    (["--direct", "--init-rate", "0.2"], "--from-ann"),
    (["--direct", "--model", "nope"], "unknown model"),
    (["--direct", "--epochs", "0"], "--epochs"),
    (["--direct", "--surrogate", "pwl", "--alpha", "0.3"], "no hyperparameter alpha"),
    (["--direct", "--baseline", "abc"], "--baseline"),
    (["--direct", "--lambda-norm", "nan"], "--lambda-norm must be a finite number"),
    (["--direct", "--penalty", "none", "--lambda-norm", "8"], "drop --lambda-norm"),
    (["--direct", "--threads", "-2"], "--threads must be >= 1, got -2"),
    (["--direct", "--train-samples", "0"], "--train-samples must be >= 1, got 0"),
    (["--direct", "--samples", "0"], "--samples must be >= 1, got 0"),
    (["--direct", "--from-ann", "DIR"], "is a folder; give the checkpoint file"),
])
def test_cli_finetune_bad_options_one_line(extra, message, tmp_path, capsys):
    (tmp_path / "DIR").mkdir()
    extra = [str(tmp_path / "DIR") if a == "DIR" else a for a in extra]
    assert main(["finetune", *extra, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synopt: error:") and message in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_direct_on_event_data_takes_collapsed_counts(data_root, tmp_path):
    """N-MNIST: one input frame of event counts (T = 1); the T = 1 sinabs export agrees with the trained form."""
    from synopt.finetune.direct import train_direct

    res = train_direct("mnistdvs", "nmnist", out=tmp_path / "dvs", data_root=str(data_root), epochs=1,
                       train_samples=64, eval_samples=20, penalty="syn", lambda_norm=4.0, progress=False, threads=1)
    m = res["metrics"]
    assert "time-collapsed event counts" in m["input_note"]
    assert m["accounting"]["input_shape"] == [2, 34, 34]
    assert m["sinabs_t1"]["accuracy_equal"] and abs(m["sinabs_t1"]["synops_relative_difference"]) < 1e-9


def test_preactresnet_with_inverted_neurons_exports_exactly(tmp_path):
    """PreActResNet18: every BN after a residual addition gets negative γ channels; the folded net keeps them as
    polarity -1 and the T = 1 IF export (negated synapses) gives the same accuracy and SynOps per layer."""
    torch.manual_seed(0)
    net = build_snn("preactresnet18", (3, 16, 16), 10)
    _randomise_bn(net, torch.Generator().manual_seed(1), zero_beta_fire=False)
    net.eval()
    fold = fold_thresholds(net)
    assert len(fold.polarity) >= 8 and sum(int((v < 0).sum()) for v in fold.polarity.values()) > 100
    ds = TensorDataset(torch.rand(16, 3, 16, 16), torch.randint(0, 10, (16,)))
    m = measure(fold.net, energy.analyze(fold.net, (3, 16, 16)), ds)
    m_bn = measure(net, energy.analyze(net, (3, 16, 16)), ds)
    sim = simulate(export_sinabs(fold), ds, 1, (3, 16, 16), progress=False)
    assert torch.equal(m.predictions, m_bn.predictions) and m.synops_per_layer == m_bn.synops_per_layer
    assert sim.accuracy == m.accuracy and sim.synops_per_layer == m.synops_per_layer and sim.synops > 0
    source = {"kind": "zoo", "name": "preactresnet18",
              "overrides": {"in_channels": 3, "input_size": [16, 16], "num_classes": 10}}
    save_snn(tmp_path, fold, {"source": source, "input_shape": [3, 16, 16]})
    reloaded, spec = load_snn(tmp_path)  # the polarity travels with the thresholds
    assert spec["exportable"]
    assert simulate(reloaded, ds, 1, (3, 16, 16), progress=False).synops_per_layer == sim.synops_per_layer


def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys):
    """A direct run that fails before its first checkpoint (here alpha = 0, refused when the neuron is built) removes
    the folder it created, so the corrected command is not refused as 'another configuration'."""
    out = tmp_path / "run"
    base = ["finetune", "--direct", "--model", "digitsnet", "--dataset", "digits", "--epochs", "1", "--samples", "50",
            "--quiet", "--out", str(out)]
    assert main([*base, "--alpha", "0"]) == 2
    assert "alpha" in capsys.readouterr().err and not out.exists()
    assert main(base) == 0 and (out / "metrics.json").is_file()
