"""The shared training loop: bfloat16 autocast for plain ANN training."""

import pytest
import torch

from synopt import data, zoo
from synopt.finetune.train import TrainConfig, evaluate, fit


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _train(digits, bf16: bool):
    torch.manual_seed(0)
    net = zoo.build("digitsnet")
    fit(net, digits.train, None, TrainConfig(epochs=3, batch_size=32, lr=3e-3, progress=False, bf16=bf16))
    return net, evaluate(net, digits.test)


def test_bf16_autocast_trains_float32_weights_as_well_as_float32(digits):
    net16, acc16 = _train(digits, True)
    net32, acc32 = _train(digits, False)
    assert all(p.dtype == torch.float32 for p in net16.parameters())  # autocast only, the model stays fp32
    assert not all(torch.equal(a, b) for a, b in zip(net16.parameters(), net32.parameters()))  # bf16 really ran
    assert acc32 > 0.85 and abs(acc16 - acc32) < 0.04, (acc16, acc32)


def test_bf16_refuses_a_penalty(digits):
    net = zoo.build("digitsnet")
    with pytest.raises(ValueError, match="bf16"):
        fit(net, digits.train, None, TrainConfig(epochs=1, progress=False, bf16=True),
            extra_loss=lambda m, x, logits: (logits.sum() * 0, {}))
