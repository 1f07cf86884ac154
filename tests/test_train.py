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



def test_a_resumed_training_equals_an_uninterrupted_one(digits, tmp_path):
    """The checkpoint carries the random state, so the dropout draws after a resume are those of an uninterrupted
    run (the data order is seeded per epoch): the weights come out bit-identical (they did not before)."""
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                   torch.nn.Linear(32, 10))

    def stop_at_the_second_epoch(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(model(), digits.train, None, cfg, checkpoint_dir=tmp_path, on_epoch_start=stop_at_the_second_epoch)
    resumed = model()
    torch.manual_seed(123)  # as in a new process: another random state, until the checkpoint restores it
    fit(resumed, digits.train, None, cfg, checkpoint_dir=tmp_path)
    straight = model()
    fit(straight, digits.train, None, cfg)
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), straight.parameters()))
