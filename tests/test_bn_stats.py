"""BatchNorm re-estimation with dropout off (finetune/bn_stats.py) and its `convert --recalibrate-bn` option."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from synopt.finetune.bn_stats import recalibrate_batchnorm


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                         nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())


def _data(n=40):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 2, 5, 5, generator=g), torch.zeros(n, dtype=torch.long))


def test_statistics_are_those_of_the_dropout_free_network():
    net, ds = _net(), _data()
    with torch.no_grad():  # train with dropout a little: running stats that differ from the answer
        net.train()
        for _ in range(3):
            net(ds.tensors[0])
    net.train()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    momentum = net[1].momentum
    assert recalibrate_batchnorm(net, ds, samples=40, batch_size=40) == 2
    # independent: each BN's input with dropout off, its mean and unbiased variance over (N, H, W)
    with torch.no_grad():
        x = ds.tensors[0]
        h1 = net[0](x)
        a1 = torch.relu((h1 - h1.mean((0, 2, 3), keepdim=True)) / torch.sqrt(h1.var((0, 2, 3), unbiased=False,
                                                                                    keepdim=True) + net[1].eps)
                        * net[1].weight.view(1, -1, 1, 1) + net[1].bias.view(1, -1, 1, 1))
        h2 = net[4](a1)  # no dropout: the network as it runs after conversion
    for bn, h in ((net[1], h1), (net[5], h2)):
        torch.testing.assert_close(bn.running_mean, h.mean((0, 2, 3)))
        torch.testing.assert_close(bn.running_var, h.var((0, 2, 3), unbiased=True))
    assert net[1].momentum == momentum and net.training and net[3].training  # modes and momentum as they were
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k


def test_batches_average_per_batch_statistics():
    """Smaller batches: BatchNorm's cumulative average of the per-batch statistics (momentum=None)."""
    from synopt.finetune.train import seeded_subset

    net, ds = _net(), _data(40)
    recalibrate_batchnorm(net, ds, samples=40, batch_size=20)
    sub = seeded_subset(ds, 40, 0)  # the order the function draws the items in
    halves = []
    for part in (range(20), range(20, 40)):
        m = copy.deepcopy(net)
        recalibrate_batchnorm(m, torch.utils.data.Subset(sub, list(part)), samples=20, batch_size=20)
        halves.append(m)
    for i in (1, 5):
        bn, a, b = net[i], halves[0][i], halves[1][i]
        torch.testing.assert_close(bn.running_mean, (a.running_mean + b.running_mean) / 2)
        torch.testing.assert_close(bn.running_var, (a.running_var + b.running_var) / 2)


def test_a_model_without_batchnorm_is_left_alone():
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten())
    before = copy.deepcopy(net.state_dict())
    assert recalibrate_batchnorm(net, _data(), samples=10) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("kwargs, needle", [
    ({"samples": 1}, "at least 2 training samples"),
    ({"samples": 10, "batch_size": 1}, "batches of at least 2"),
])
def test_bad_arguments_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        recalibrate_batchnorm(_net(), _data(), **kwargs)


def test_untracked_batchnorm_is_named():
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(ValueError, match=r"\['1'\].*track_running_stats=False"):
        recalibrate_batchnorm(net, _data(), samples=10)


def test_a_failing_pass_puts_the_old_statistics_back():
    net = _net()
    net[1].running_mean.fill_(0.3)
    before = copy.deepcopy(net.state_dict())
    bad = TensorDataset(torch.randn(8, 5, 5, 5), torch.zeros(8, dtype=torch.long))  # 5 channels, the net wants 2
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(net, bad, samples=8)
    for k, v in before.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert net[1].momentum == 0.1


def test_convert_recalibrates_before_folding(tmp_path):
    """`convert --recalibrate-bn N`: the converted ANN is the trained one with its BN statistics re-estimated on N
    training images (the same seeded subset), and the run notes the accuracy before and after."""
    from synopt import data, zoo
    from synopt.cli import main
    from synopt.convert.pipeline import prepare_options
    from synopt.finetune.train import evaluate
    from synopt.graph import prepare
    from synopt.runs import load_checkpoint

    first = tmp_path / "ann"
    assert main(["convert", "--model", "digitsnet", "--dataset", "digits", "--train-epochs", "3", "--method", "rho",
                 "--rho", "1", "--samples", "50", "--out", str(first), "--quiet"]) == 0
    ckpt = first / "source" / "ann.pt"
    out = tmp_path / "recal"
    assert main(["convert", "--model", "digitsnet", "--checkpoint", str(ckpt), "--dataset", "digits",
                 "--recalibrate-bn", "300", "--method", "rho", "--rho", "1", "--samples", "50", "--out", str(out),
                 "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    ann = zoo.build("digitsnet")
    ann.load_state_dict(load_checkpoint(ckpt)["state_dict"])
    splits = data.load("digits", None, split_seed=0)
    before = evaluate(ann, splits.test)
    recalibrate_batchnorm(ann, splits.train, 300, seed=0)
    prepared, _ = prepare(ann, **prepare_options({}))
    assert m["ann_accuracy"] == pytest.approx(evaluate(prepared, splits.test))
    note = next(n for n in m["notes"] if n.startswith("recalibrate_bn"))
    assert "2 BatchNorm layer(s) on 300 training images" in note
    assert f"{100 * before:.2f}% -> {100 * m['ann_accuracy']:.2f}%" in note
    assert json.loads((out / "config.json").read_text())["config"]["recalibrate_bn"] == 300


def test_convert_refuses_one_recalibration_image(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "synopt.cli", "convert", "--model", "digitsnet", "--method", "rho",
                        "--recalibrate-bn", "1", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "--recalibrate-bn is a number of training images (>= 2" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
