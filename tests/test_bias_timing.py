"""Bias timing (convert/bias_timing.py): when the biases enter the IF neurons, checked on counts worked out by hand."""

import pytest
import torch
import torch.nn as nn

from synopt.convert.bias_timing import step_currents, timed_biases
from synopt.convert.qat import qrelu_network
from synopt.convert.qrelu import if_spike_counts
from synopt.convert.temporal import temporal_current
from synopt.convert.to_sinabs import to_sinabs


def test_step_currents_by_hand():
    total = torch.tensor([-2.0, 3.0])
    spread = step_currents(total, 4, "spread")
    assert spread.tolist() == [[-0.5, 0.75]] * 4
    assert step_currents(total, 4, "negative-first").tolist() == [[-2.0, 0.75], [0.0, 0.75], [0.0, 0.75],
                                                                   [0.0, 0.75]]
    assert step_currents(total, 4, "signed").tolist() == [[-2.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 3.0]]
    for timing in ("spread", "negative-first", "signed"):
        assert step_currents(total, 1, timing).tolist() == [[-2.0, 3.0]]
        b = total.clone().requires_grad_()
        s = step_currents(b, 5, timing)
        assert torch.allclose(s.sum(0), total)
        s.sum().backward()  # every unit of charge reaches the neuron once: d(sum)/db = 1
        assert b.grad.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown bias timing 'late'.*spread, negative-first, signed"):
        step_currents(total, 4, "late")


def _hand_net() -> nn.Sequential:
    """Two hidden neurons (identity weights, biases -1.5 and +0.5) whose spikes the output layer passes on."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.copy_(torch.tensor([-1.5, 0.5]))
        net[2].weight.copy_(torch.eye(2))
    return net


# Frames: neuron A gets 2 then 0, neuron B 0.9 then -0.9; the QReLU of the totals gives floor(0.5) = 0 for both.
# spread (b/T = -0.75, +0.25): A 2 - 0.75 = 1.25 fires at step 1; B 0.9 + 0.25 = 1.15 fires at step 1.
# negative-first: A starts at -1.5 and never reaches 1 (0.5, 0.5); B as spread.
# signed: A as negative-first; B 0.9, then 0.9 - 0.9 + 0.5 = 0.5: no spike.
HAND = {"spread": [[1.0, 1.0], [0.0, 0.0]], "negative-first": [[0.0, 1.0], [0.0, 0.0]],
        "signed": [[0.0, 0.0], [0.0, 0.0]]}


@pytest.mark.parametrize("timing", list(HAND))
def test_if_counts_by_hand_in_sinabs_and_the_time_aware_qrelu(timing):
    x = torch.tensor([[[2.0, 0.9], [0.0, -0.9]]])  # [B=1, T=2, 2]
    snn = to_sinabs(_hand_net(), encoding="events", bias_timing=timing)
    with torch.no_grad():
        _, spikes = snn(x)
    assert spikes[0].tolist() == HAND[timing]
    qnet = qrelu_network(_hand_net(), bias_timing=timing)
    with torch.no_grad():
        assert if_spike_counts(temporal_current(qnet.net, x, qnet.bias_timing))[0].tolist() == HAND[timing]
    assert _hand_net()[0].bias.tolist() == [-1.5, 0.5]  # conversion and estimate leave the parameters alone


def test_rate_coding_moves_the_charge_of_t_biases():
    """Rate coding: x and b every step, so a bias carries T·b. x = 2, b = -1, T = 2: spread 1 + 1 spikes;
    signed puts -2 at the first step (0 spikes) and the positive charge never arrives late, so 2 spikes at step 2."""
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(1.0), net[0].bias.fill_(-1.0), net[2].weight.fill_(1.0)
    x = torch.full((1, 2, 1), 2.0)
    for timing, expected in (("spread", [[1.0], [1.0]]), ("signed", [[0.0], [2.0]])):
        with torch.no_grad():
            _, spikes = to_sinabs(net, encoding="rate", bias_timing=timing)(x)
        assert spikes[0].tolist() == expected, timing


def _conv_net() -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 3 * 3, 3))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[0].bias.copy_(torch.tensor([-1.5, 0.8, -0.4, 0.2]))
    return net


@pytest.mark.parametrize("timing", ["negative-first", "signed"])
def test_training_path_equals_the_stepped_network_and_reaches_the_biases(timing):
    """With gradients the SNN runs all steps as one [B*T] batch (sinabs' layout); the hooks must give the currents
    of the stepped inference path, and the gradient must reach the biases through their step currents."""
    x = torch.rand(5, 4, 2, 6, 6) * 2
    snn = to_sinabs(_conv_net(), encoding="count", bias_timing=timing)
    with torch.no_grad():
        stepped_current, _ = snn(x)
    batched_current, _ = snn(x.clone().requires_grad_())
    assert torch.allclose(batched_current, stepped_current, atol=1e-5)
    batched_current.sum().backward()
    assert snn.body[0].bias.grad is not None and snn.body[0].bias.grad.abs().sum() > 0
    # the time-aware QReLU trains through the same step currents
    qnet = qrelu_network(_conv_net(), bias_timing=timing)
    temporal_current(qnet.net, x, timing).sum().backward()
    assert qnet.net[0].bias.grad.abs().sum() > 0


def test_a_linear_layer_on_sequences_gets_its_bias_on_the_last_axis():
    lin = nn.Linear(3, 2)
    x = torch.randn(2 * 4, 5, 3)  # [B*T, L, features]
    with torch.no_grad(), timed_biases(lin, 4, "signed") as (overrides, clock):
        out = torch.func.functional_call(lin, overrides, (x,))
        clock.step = 3
        last = torch.func.functional_call(lin, overrides, (x[:2],))
    per_step = step_currents(lin.bias.detach(), 4, "signed")  # [T, 2]
    expected = (x @ lin.weight.T).reshape(2, 4, 5, 2) + per_step[None, :, None, :]
    assert torch.allclose(out, expected.reshape(8, 5, 2), atol=1e-6)
    assert torch.allclose(last, x[:2] @ lin.weight.T + per_step[3], atol=1e-6)
    with pytest.raises(ValueError, match="multiple of T = 4"), timed_biases(lin, 4, "signed") as (overrides, _):
        torch.func.functional_call(lin, overrides, (x[:3],))


def test_an_unknown_timing_is_refused_before_anything_is_written(tmp_path):
    from synopt.convert.pipeline import ConvertConfig, run_conversion
    from synopt.convert.source import ModelSource

    cfg = ConvertConfig(source=ModelSource("zoo", name="digitsnet"), dataset="digits", out=str(tmp_path / "run"),
                        target_synops=1e5, bias_timing="late")
    with pytest.raises(ValueError, match="--bias-timing must be one of spread, negative-first, signed, got 'late'"):
        run_conversion(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="unknown bias timing"):
        to_sinabs(_hand_net(), encoding="count", bias_timing="late")


def test_a_large_snn_gap_under_spread_biases_suggests_another_timing():
    from synopt.convert.pipeline import bias_timing_hint

    hint = bias_timing_hint(0.70, 0.12, "spread", _hand_net())
    assert "58.0 points below its QReLU network (12.00% vs 70.00%)" in hint and "--bias-timing signed" in hint
    assert bias_timing_hint(0.70, 0.69, "spread", _hand_net()) is None  # within 2 points
    assert bias_timing_hint(0.70, 0.12, "signed", _hand_net()) is None  # already moved
    no_bias = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    assert bias_timing_hint(0.70, 0.12, "spread", no_bias) is None  # the gap has another cause
