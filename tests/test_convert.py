"""Conversion core: QReLU, rho scaling, SynOp loss, IF dynamics, count coding, simulation accounting."""

import functools

import pytest
import torch
import torch.nn as nn

from synopt import energy
from synopt.convert.qat import SynOpLoss
from synopt.convert.qrelu import OutputQReLU, QReLU, spike_count_score, swap_activations
from synopt.convert.rho import input_and_output_layers, scale_first_layer
from synopt.convert.to_sinabs import IFSqueeze, to_sinabs
from synopt.simulate.kernels import if_forward
from synopt.simulate.run import encode, simulate


def test_qrelu_forward_floor_backward_relu():
    x = torch.tensor([-1.5, -0.2, 0.0, 0.4, 1.0, 2.7], requires_grad=True)
    y = QReLU()(x)
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 2.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_output_qrelu_train_identity_eval_counts():
    head = OutputQReLU()
    x = torch.tensor([[2.7, -1.0, 2.2]])
    head.train()
    assert torch.equal(head(x), x)
    head.eval()
    scores = head(x)
    assert torch.allclose(scores.floor(), torch.tensor([[2.0, 0.0, 2.0]]))
    assert scores.argmax().item() == 0  # tie on count 2 broken by the larger current 2.7
    assert torch.equal(spike_count_score(torch.tensor([1.0, 0.0]), torch.tensor([-50.0, 50.0])).argmax(),
                       torch.tensor(0))


def _mlp(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6, bias=bias), nn.ReLU(), nn.Linear(6, 5, bias=bias), nn.ReLU(),
                         nn.Linear(5, 3, bias=bias))


def test_rho_scaling_keeps_the_relu_function_and_scales_activity():
    net = _mlp()
    assert input_and_output_layers(net) == (["0"], ["4"])
    scaled = scale_first_layer(net, 3.0)
    x = torch.randn(8, 4)
    assert torch.allclose(scaled(x), net(x), atol=1e-5)
    assert torch.allclose(scaled[:2](x), 3.0 * net[:2](x), atol=1e-5)
    assert torch.allclose(scaled[:4](x), 3.0 * net[:4](x), atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        scale_first_layer(net, 0.0)


def test_synop_loss_is_eq2_with_alpha_one_over_target_squared():
    acc = energy.analyze(_mlp(), (4,))
    loss = SynOpLoss(acc, target=100.0)
    assert loss(torch.tensor(150.0)).item() == pytest.approx(0.25)
    assert loss(torch.tensor(100.0)).item() == 0.0
    penalty = SynOpLoss(acc, alpha=1e-3)
    assert penalty(torch.tensor(150.0)).item() == pytest.approx(0.15)
    with pytest.raises(ValueError, match="target"):
        SynOpLoss(acc)
    with pytest.raises(ValueError, match="positive"):
        SynOpLoss(acc, target=-5)


def test_if_dynamics_by_hand():
    x = torch.tensor([0.6, 0.6, 0.6, 2.5, -3.0, 0.4]).view(1, 6, 1)
    v = torch.zeros(1, 1)
    # v: .6 -> 1.2 fire 1 (.2) -> .8 -> 3.3 fire 3 (.3) -> -2.7 -> -2.3
    assert if_forward(x, v.clone(), 1.0).flatten().tolist() == [0, 1, 0, 3, 0, 0]
    # single spike: .6 -> 1.2 fire (.2) -> .8 -> 3.3 fire once (2.3) -> -.7 -> -.3
    assert if_forward(x, v.clone(), 1.0, single_spike=True).flatten().tolist() == [0, 1, 0, 1, 0, 0]
    # lower bound -1: after -3.0 the membrane is clipped to -1, then -1 + .4 = -.6
    v_b = v.clone()
    assert if_forward(x, v_b, 1.0, v_min=-1.0).flatten().tolist() == [0, 1, 0, 3, 0, 0]
    assert v_b.item() == pytest.approx(-0.6)
    # starting at θ/2
    assert if_forward(x[:, :2], torch.full((1, 1), 0.5), 1.0).flatten().tolist() == [1, 0]


def test_numba_kernel_equals_torch_loop():
    torch.manual_seed(1)
    x = torch.randn(3, 7, 2, 5, 5)
    for single in (False, True):
        for v_min in (None, -0.5):
            a = if_forward(x, torch.zeros(3, 2, 5, 5), 0.7, v_min, single, use_numba=True)
            b = if_forward(x, torch.zeros(3, 2, 5, 5), 0.7, v_min, single, use_numba=False)
            assert torch.equal(a, b)


def test_stepwise_equals_all_at_once():
    layer = IFSqueeze(1.0)
    x = torch.rand(2 * 5, 3) * 2
    layer.num_timesteps = 5
    layer.reset_membrane()
    whole = layer(x).view(2, 5, 3)
    layer.reset_membrane()
    layer.num_timesteps = 1
    xs = x.view(2, 5, 3)
    steps = torch.stack([layer(xs[:, t]) for t in range(5)], 1)
    assert torch.equal(whole, steps)


@pytest.mark.parametrize("timesteps", [1, 3, 8])
def test_count_coding_first_layer_fires_floor_of_activation(timesteps):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    with torch.no_grad():
        net[0].weight.mul_(4)
        net[0].bias.fill_(0.3)  # biases are injected as b/T per step under count coding
    snn = to_sinabs(net, encoding="count")
    x = torch.rand(6, 1, 5, 5)
    acc = energy.analyze(snn.body, (1, 5, 5))
    with torch.no_grad(), energy.ActivityRecorder(snn.body, acc, detach=True) as rec:
        snn(encode(x, timesteps, "count"))
    counts = rec.activity["1"]
    expected = torch.floor(torch.relu(net[0](x))).detach()
    # floor(sum of T equal charges) can differ from floor(total) only through float rounding of x/T
    assert (counts - expected).abs().max() <= 1 and (counts != expected).float().mean() < 0.01
    # the simulated SynOps are psi-weighted spike counts, and equal the QReLU estimate on the same spikes
    qnet = swap_activations(nn.Sequential(*[m for m in net]), QReLU)
    with torch.no_grad(), energy.ActivityRecorder(qnet, acc, detach=True) as rec_q:
        qnet(x)
    assert torch.isclose(energy.synops(acc, {"1": counts}), energy.synops(acc, rec_q.activity), rtol=0.01)


def test_rate_coding_injects_bias_every_step():
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[0].bias.fill_(0.25)
    x = torch.ones(1, 1)
    acc = energy.analyze(net, (1,))
    for encoding, expected in (("rate", 7.0), ("count", 0.0)):  # rate: 0.75/step x 10 steps; count: 0.75 total
        snn = to_sinabs(net, encoding=encoding)
        with torch.no_grad(), energy.ActivityRecorder(snn.body, acc, detach=True) as rec:
            snn(encode(x, 10, encoding))
        assert rec.activity["1"].sum().item() == expected


def test_to_sinabs_thresholds_and_errors():
    net = _mlp()
    snn = to_sinabs(net, encoding="count", thresholds={"1": 2.0})
    ifs = {n: m for n, m in snn.body.named_modules() if isinstance(m, IFSqueeze)}
    assert float(ifs["1"].spike_threshold) == 2.0 and float(ifs["3"].spike_threshold) == 1.0
    assert net[1].__class__ is nn.ReLU  # the input network is not modified
    with pytest.raises(ValueError, match="unknown sites"):
        to_sinabs(net, encoding="count", thresholds={"nope": 1.0})
    with pytest.raises(ValueError, match="encoding"):
        to_sinabs(net, encoding="morse")
    with pytest.raises(ValueError, match="no activation sites"):
        to_sinabs(nn.Sequential(nn.Linear(2, 2)), encoding="count")


def test_simulate_counts_with_the_same_accounting(tmp_path):
    from torch.utils.data import TensorDataset

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(3 * 2 * 2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.abs_().mul_(3)
        net[4].weight.fill_(-1.0)  # an output layer that never fires: the simulator must say so
    x = torch.rand(10, 1, 4, 4)
    y = torch.randint(0, 2, (10,))
    snn = to_sinabs(net, encoding="count")
    with pytest.warns(UserWarning, match="output layer was silent"):
        res = simulate(snn, TensorDataset(x, y), 5, (1, 4, 4), batch_size=4, progress=False)
    acc = energy.analyze(net, (1, 4, 4))
    with torch.no_grad(), energy.ActivityRecorder(snn.body, acc, detach=True) as rec:
        snn(encode(x, 5, "count"))
    expected = energy.synops(acc, rec.activity, n_samples=10).item()
    assert res.synops == pytest.approx(expected)
    # by hand: every spike of site "1" reaches, through the 2x2 sum pool, the 2 outputs of the linear layer
    assert res.synops == pytest.approx(2 * rec.activity["1"].sum().item() / 10)
    assert len(res.accuracy_per_step) == 5 and res.samples == 10
    assert res.firing_rate["1"] == pytest.approx(rec.activity["1"].sum().item() / (48 * 10 * 5))


def test_count_coding_with_a_folded_input_offset():
    from synopt.graph import prepare

    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with torch.no_grad():
        net[0].weight.abs_().mul_(4)
    # the model expects inputs in -1..1; synopt feeds 0..1: the offset stays an explicit add before the padded conv
    prepared, _ = prepare(net, input_convention={"input_range": (-1.0, 1.0)})
    assert prepared.meta["synopt_input"].get("offset")
    x = torch.rand(5, 1, 4, 4)
    expected = torch.floor(torch.relu(net[0](x * 2 - 1))).detach()
    snn = to_sinabs(prepared, encoding="count")
    acc = energy.analyze(snn.body, (1, 4, 4))
    with torch.no_grad(), energy.ActivityRecorder(snn.body, acc, detach=True) as rec:
        snn(encode(x, 6, "count"))
    site = next(iter(rec.activity))
    assert (rec.activity[site] - expected).abs().max() <= 1
    assert (rec.activity[site] != expected).float().mean() < 0.02



@functools.lru_cache(maxsize=1)
def _digits_ann():
    from synopt import data, zoo
    from synopt.finetune.train import TrainConfig, fit
    from synopt.graph import prepare

    torch.manual_seed(0)
    splits = data.load("digits")
    ann = zoo.build("digitsnet", dropout=False)
    fit(ann, splits.train, None, TrainConfig(epochs=4, batch_size=64, lr=3e-3, progress=False))
    return splits, prepare(ann.eval())[0]


def _digits_qat(control: float, epochs: int, checkpoint_dir=None, stop_after: int | None = None,
                control_start: float = 1.0):
    """The trained digitsnet as a QReLU net (rho 2), fine-tuned towards half of its SynOps without annealing."""
    from synopt.convert.qat import estimate, finetune, qrelu_network
    from synopt.finetune.train import TrainConfig

    splits, ann = _digits_ann()
    torch.manual_seed(0)
    qnet = qrelu_network(ann, rho=2.0)
    start = estimate(qnet, energy.analyze(qnet.net, (1, 8, 8)), splits.val)[1]

    def stop(epoch, _row):
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt

    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, progress=False)
    return start / 2, finetune(qnet, splits.train, None, cfg, (1, 8, 8), target=start / 2, anneal=False,
                               control=control, checkpoint_dir=checkpoint_dir, on_epoch_end=stop,
                               control_start=control_start)


def test_closed_loop_target_lowers_s0_once_the_synops_settle():
    """Eq. 2 alone settles above S0; the closed-loop target (qat.finetune ``control``) lowers the loss's S0 by
    (target / S)^gain after every epoch whose SynOps moved by less than SETTLED, and so ends nearer the target."""
    from synopt.convert.qat import SETTLED

    target, plain = _digits_qat(0.0, 6)
    _, ctl = _digits_qat(0.5, 6)
    assert all(h["target"] == pytest.approx(target) for h in plain)  # open loop: S0 stays the target
    assert plain[-1]["synops"] > 1.05 * target
    k, moved = 1.0, 0
    for prev, row, nxt in zip(ctl, ctl[1:], ctl[2:]):
        assert row["scheduled_target"] == pytest.approx(target)
        if abs(row["synops"] / prev["synops"] - 1) < SETTLED:
            k, moved = min(2.0, max(0.25, k * (target / row["synops"]) ** 0.5)), moved + 1
        assert nxt["target"] == pytest.approx(k * target)
    assert moved >= 2 and ctl[-1]["target"] < target
    assert ctl[-1]["synops"] < plain[-1]["synops"]
    assert [row["control_gain"] for row in ctl[:-1]] == pytest.approx([row["target"] / target for row in ctl[1:]])
    # a second phase starts from the first one's correction (pipeline: static epochs, then time-aware ones)
    _, cont = _digits_qat(0.5, 1, control_start=ctl[-1]["control_gain"])
    assert cont[0]["target"] == pytest.approx(ctl[-1]["control_gain"] * target) and ctl[-1]["control_gain"] < 1


def test_closed_loop_target_resumes_with_the_same_correction(tmp_path):
    _, full = _digits_qat(0.5, 5)
    with pytest.raises(KeyboardInterrupt):
        _digits_qat(0.5, 5, checkpoint_dir=tmp_path, stop_after=3)  # epochs 1-3 checkpointed, 4 interrupted
    _, resumed = _digits_qat(0.5, 5, checkpoint_dir=tmp_path)
    assert len(resumed) == 5 and full[3]["target"] < full[0]["target"]
    assert resumed[3]["target"] == pytest.approx(full[3]["target"], rel=1e-6)  # replayed from the history


def test_qrelu_network_drops_the_dropout_before_the_last_activation():
    """All-ConvNet: input dropout and the dropout after each of the first 7 QReLUs go (they bias the floor during
    QAT); the one after the last QReLU, before the output conv, stays. The network is unchanged at eval."""
    from synopt import zoo
    from synopt.convert.qat import qrelu_network
    from synopt.graph import prepare

    torch.manual_seed(0)
    ann = prepare(zoo.build("allconvnet", width=0.125, batch_norm=True).eval())[0]
    n_drop = sum(isinstance(m, nn.Dropout) for m in ann.modules())
    qnet = qrelu_network(ann, rho=2.0)
    assert n_drop == 9 and len(qnet.dropout_removed) == 8
    kept = [n for n, m in qnet.net.named_modules() if isinstance(m, nn.Dropout)]
    assert len(kept) == 1 and kept[0] not in qnet.dropout_removed
    x = torch.rand(8, 3, 32, 32)
    qnet.eval()
    torch.testing.assert_close(qnet(x), qrelu_network(ann, rho=2.0).eval()(x))
    # a plain Sequential with dropout only after the last activation keeps it
    seq = qrelu_network(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2)))
    assert seq.dropout_removed == [] and isinstance(seq.net[2], nn.Dropout)


def test_relative_lr_follows_each_tensor_scale_against_the_ann():
    """--relative-lr: rho multiplies the input layer's weights and every bias and divides the output layer's
    weights (rho.py), so their learning rates are lr x rho, lr x rho and lr / rho; the rest keep lr. One Adam step
    then changes the input layer by the same fraction of itself as it would in the unscaled network."""
    from synopt.convert.pipeline import prepare_options
    from synopt.convert.qat import qrelu_network, relative_lr_groups
    from synopt.convert.rho import input_and_output_layers
    from synopt.graph import prepare
    from synopt.zoo import build

    torch.manual_seed(0)
    ann = prepare(build("digitsnet"), **prepare_options({}))[0].eval()
    with torch.no_grad():  # biases as BN folding leaves them (a zero tensor has no scale and keeps lr)
        for name, p in ann.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    first, last = input_and_output_layers(ann)
    qnet = qrelu_network(ann, 64.0)
    groups = {g["name"]: g["lr"] for g in relative_lr_groups(qnet, ann, 1e-3)}
    assert len(groups) == len(list(ann.parameters()))
    for name, lr in groups.items():
        layer, kind = name.rsplit(".", 1)
        expected = 1e-3 * (64.0 if kind == "bias" or layer in first else 1.0) / (64.0 if kind == "weight" and
                                                                                 layer in last else 1.0)
        assert lr == pytest.approx(expected, rel=1e-5), name
    assert 1e-3 * 64 in [pytest.approx(v) for v in groups.values()] and 1e-3 / 64 in [pytest.approx(v) for v in
                                                                                       groups.values()]
    # one step on the same gradient direction: the relative change of the input layer matches the unscaled net's
    w_q = dict(qnet.net.named_parameters())[f"{first[0]}.weight"]
    w_a = dict(ann.named_parameters())[f"{first[0]}.weight"]
    before_q, before_a = w_q.detach().clone(), w_a.detach().clone()
    opt_q = torch.optim.Adam(relative_lr_groups(qnet, ann, 1e-3))
    opt_a = torch.optim.Adam(ann.parameters(), lr=1e-3)
    for w, opt in ((w_q, opt_q), (w_a, opt_a)):
        opt.zero_grad()
        w.grad = torch.ones_like(w)
        opt.step()
    rel_q = float((w_q.detach() - before_q).norm() / before_q.norm())
    rel_a = float((w_a.detach() - before_a).norm() / before_a.norm())
    assert rel_q == pytest.approx(rel_a, rel=1e-4)
