"""What users hand to `synopt convert`: models with ReLU6 and max pooling, ONNX files with open H/W or several outputs,
wrong outputs, reused or foreign run folders, bad options; and run folders used from elsewhere."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from synopt import data
from synopt.cli import main
from synopt.convert import pipeline
from synopt.convert.pipeline import ConvertConfig, budget_miss, choose_rho, run_conversion
from synopt.convert.source import ModelSource
from synopt.runs import RunDir, check_out_folder


class ClippedNet(nn.Module):
    """A small digits CNN as found in the wild: ReLU6 activations and max pooling."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU6())
        self.head = nn.Linear(16 * 4 * 4, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TwoOutputs(nn.Module):
    """Global pooling head (any H, W) returning (logits, feature map)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        feat = torch.relu(self.conv(x))
        return self.fc(feat.mean((2, 3))), feat


def _trained_clipped_net(seed: int = 0, epochs: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    net = ClippedNet()
    train = data.load("digits").train
    xs = torch.stack([train[i][0] for i in range(len(train))])
    ys = torch.tensor([train[i][1] for i in range(len(train))])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(xs), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xs[i:i + 64]), ys[i:i + 64]).backward()
            opt.step()
    return net.eval()


def _export(model: nn.Module, path, outputs=("logits",), hw: bool = False) -> str:
    axes = {"x": {0: "batch", **({2: "h", 3: "w"} if hw else {})}}
    torch.onnx.export(model.eval(), (torch.rand(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      output_names=list(outputs), dynamic_axes=axes)
    return str(path)


def _onnxruntime_accuracy(path: str) -> float:
    test = data.load("digits").test
    xs = torch.stack([test[i][0] for i in range(len(test))]).numpy()
    ys = np.array([test[i][1] for i in range(len(test))])
    logits = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": xs})[0]
    return float((logits.argmax(1) == ys).mean())


def test_relu6_and_maxpool_model_converts_as_the_network_its_snn_runs(tmp_path):
    """ReLU6 becomes ReLU and max pooling average pooling before QAT, so the QReLU estimate describes the SNN; the run
    reports the model's own accuracy (onnxruntime's, an independent reference) next to the prepared one."""
    path = _export(_trained_clipped_net(), tmp_path / "clipped.onnx")
    reference = _onnxruntime_accuracy(path)
    m = run_conversion(ConvertConfig(source=ModelSource("onnx", onnx=path), dataset="digits", out=str(tmp_path / "r"),
                                     target_fraction=0.5, epochs=2, lr=3e-3, timesteps=10, bias_timing="signed",
                                     progress=False))
    note = next(n for n in m["notes"] if n.startswith("preparation changed the ANN's test accuracy"))
    assert f"from {100 * reference:.2f}% (the model as given) to {100 * m['ann_accuracy']:.2f}%" in note
    assert sum(n.startswith("replace_bounded_relu:") for n in m["notes"]) == 2
    point = m["points"][0]
    assert point["sim_synops"] == pytest.approx(point["qrelu_synops"], rel=0.05)
    assert point["sim_synops"] == pytest.approx(point["target"], rel=0.10)


def test_open_spatial_size_and_output_index_from_the_command_line(tmp_path, capsys):
    torch.manual_seed(0)
    path = _export(TwoOutputs(), tmp_path / "two.onnx", outputs=("logits", "feat"), hw=True)
    base = ["convert", "--onnx", path, "--method", "rho", "--rho", "2", "-T", "3", "--samples", "30", "--quiet"]
    assert main([*base, "--input", "1x8x8", "--out", str(tmp_path / "which")]) == 2
    assert "2 outputs ['logits', 'feat']" in capsys.readouterr().err and not (tmp_path / "which").exists()
    base += ["--onnx-output", "0"]
    assert main([*base, "--out", str(tmp_path / "noshape")]) == 2
    assert "--input CxHxW" in capsys.readouterr().err and not (tmp_path / "noshape").exists()
    assert main([*base, "--input", "3x8x8", "--out", str(tmp_path / "wrong")]) == 2
    assert "contradicts" in capsys.readouterr().err and not (tmp_path / "wrong").exists()
    assert main([*base, "--input", "1x8x8", "--onnx-output", "1", "--out", str(tmp_path / "feat")]) == 2
    assert "(8, 8, 8) per sample, not a vector of class scores" in capsys.readouterr().err  # the last flag wins
    out = tmp_path / "ok"
    assert main([*base, "--input", "1x8x8", "--out", str(out)]) == 0
    source = json.loads((out / "snn" / "spec.json").read_text())["source"]
    assert source["onnx_output"] == "0" and source["overrides"] == {"input_shape": [1, 8, 8]}
    sim = json.loads((out / "metrics.json").read_text())["points"][0]
    assert main(["simulate", str(out), "-T", "3", "--samples", "30", "--quiet", "--json", str(tmp_path / "s.json")]) \
        == 0  # the run folder itself is accepted, and the recorded input shape rebuilds the network
    assert json.loads((tmp_path / "s.json").read_text())["synops"] == pytest.approx(sim["sim_synops"], rel=1e-9)


def test_class_count_must_match_the_dataset(tmp_path):
    cfg = ConvertConfig(source=ModelSource("zoo", name="digitsnet", overrides={"num_classes": 5}), dataset="digits",
                        out=str(tmp_path / "r"), method="rho", rho=2.0, progress=False)
    with pytest.raises(ValueError, match="5 class outputs but dataset 'digits' has 10 classes"):
        run_conversion(cfg)
    assert not (tmp_path / "r").exists()


def _rho_args(out, *extra) -> list[str]:
    return ["convert", "--model", "digitsnet", "--train-epochs", "1", "--method", "rho", "--rho", "2", "-T", "3",
            "--samples", "30", "--quiet", "--out", str(out), *extra]


def test_a_folder_holding_another_run_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_rho_args(out)) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(_rho_args(out, "--rho", "4")) == 2
    assert "(differs in rho: 2.0 -> 4.0)" in capsys.readouterr().err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(_rho_args(out)) == 0  # the same command resumes (here: runs again) in its own folder


def test_another_model_with_the_same_parameter_names_is_refused(tmp_path, capsys):
    """Two ONNX files of one architecture with other weights: the configuration only differs in the model itself."""
    torch.manual_seed(0)
    a = _export(TwoOutputs(), tmp_path / "a.onnx")
    b = _export(TwoOutputs(), tmp_path / "b.onnx")
    out = tmp_path / "run"
    args = ["--onnx-output", "logits", "--method", "rho", "--rho", "2", "-T", "3", "--samples", "30", "--quiet",
            "--out", str(out)]
    shutil.copy(a, tmp_path / "model.onnx")
    assert main(["convert", "--onnx", str(tmp_path / "model.onnx"), *args]) == 0
    shutil.copy(b, tmp_path / "model.onnx")  # the same path, new weights
    assert main(["convert", "--onnx", str(tmp_path / "model.onnx"), *args]) == 2
    assert "differs in model_fingerprint" in capsys.readouterr().err


def test_foreign_folders_and_files_are_refused(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(_rho_args(mine)) == 2
    assert "is not empty (notes.txt) and holds no synopt run" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(_rho_args(afile)) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and afile.read_text() == "x"
    check_out_folder(tmp_path / "new")  # new and empty folders are fine
    (tmp_path / "empty").mkdir()
    check_out_folder(tmp_path / "empty")


def test_a_run_failing_before_its_first_checkpoint_leaves_nothing(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise ValueError("simulated failure")

    monkeypatch.setattr(pipeline, "_sim", fail)
    out = tmp_path / "run"
    args = ["convert", "--model", "digitsnet", "--method", "rho", "--rho", "2", "-T", "3", "--quiet", "--out",
            str(out)]
    assert main(args) == 2
    assert "simulated failure" in capsys.readouterr().err and not out.exists()
    # a run that had progress keeps its folder (to resume): here the trained ANN's checkpoints
    assert main([*args[:3], "--train-epochs", "1", *args[3:]]) == 2
    assert (out / "checkpoints" / "ann" / "last.pt").is_file()


def test_simulate_from_another_directory_after_the_run_folder_moved(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    path = _export(TwoOutputs(), tmp_path / "m.onnx")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "data").mkdir()
    assert main(["convert", "--onnx", path, "--onnx-output", "logits", "--method", "rho", "--rho", "2", "-T", "3",
                 "--samples", "30", "--quiet", "--out", "run", "--data-root", "data"]) == 0  # relative paths
    expected = json.loads((work / "run" / "metrics.json").read_text())["points"][0]
    assert json.loads((work / "run" / "config.json").read_text())["config"]["data_root"] == str(work / "data")
    shutil.move(str(work / "run"), str(tmp_path / "moved"))
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "moved/snn", "-T", "3", "--samples", "30", "--quiet", "--json", "s.json"]) == 0
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["accuracy"] == expected["sim_accuracy"] and got["synops"] == pytest.approx(expected["sim_synops"])
    (tmp_path / "adir").mkdir()
    assert main(["simulate", "moved/snn", "-T", "3", "--quiet", "--json", "adir"]) == 2
    assert "--json adir is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (["--onnx", "ONNX", "--checkpoint", "CKPT"], "--checkpoint is for --model/--torchvision"),
    (["--onnx", "DIR"], "is a folder; give the .onnx file"),
    (["--model", "digitsnet", "--input-range", "255,0"], "LO < HI"),
    (["--model", "digitsnet", "--lr", "-1"], "--lr must be positive, got -1.0"),
    (["--model", "digitsnet", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--model", "digitsnet", "--epochs", "-1"], "--epochs must be >= 0 (0: no fine-tuning), got -1"),
    (["--model", "digitsnet", "--rho", "-2"], "--rho must be positive, got -2.0"),
    (["--model", "digitsnet", "--method", "scale", "--percentile", "200"], "--percentile must be in (0, 100]"),
    (["--model", "digitsnet", "--timesteps", "0"], "--timesteps must be >= 1, got 0"),
    (["--model", "digitsnet", "--target-synops", "1e5", "--target-fraction", "0.5"],
     "give only one of --target-synops and --target-fraction"),
    (["--model", "digitsnet", "--mean", "0.5,0.5", "--std", "0.2,0.2,0.2"], "per-channel values of lengths [2, 3]"),
])
def test_bad_options_are_named_before_anything_is_written(extra, needle, tmp_path, capsys):
    (tmp_path / "DIR").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "c.pt")
    torch.manual_seed(0)
    onnx_path = _export(TwoOutputs(), tmp_path / "m.onnx")
    extra = [{"ONNX": onnx_path, "DIR": str(tmp_path / "DIR"), "CKPT": str(tmp_path / "c.pt")}.get(a, a)
             for a in extra]
    if "--target-synops" not in extra and "--method" not in extra:
        extra += ["--target-synops", "1e5"]
    assert main(["convert", *extra, "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_dir_resumes_only_the_same_configuration(tmp_path):
    RunDir(tmp_path / "r", {"a": 1, "epochs": 2, "train": {"lr": 0.1}}, ignore=("epochs",))
    RunDir(tmp_path / "r", {"a": 1, "epochs": 5, "train": {"lr": 0.1}}, ignore=("epochs",))  # ignored key
    with pytest.raises(FileExistsError, match=r'differs in train: \{"lr": 0.1\} -> \{"lr": 0.2\}\); '
                                              r'choose a new --out'):
        RunDir(tmp_path / "r", {"a": 1, "epochs": 5, "train": {"lr": 0.2}}, ignore=("epochs",))
    with pytest.raises(FileExistsError, match=r"differs in a: 1 -> 2"):
        RunDir(tmp_path / "r", {"a": 2, "epochs": 5, "train": {"lr": 0.1}})
    (tmp_path / "r" / "config.json").write_text("{not json")
    with pytest.raises(FileExistsError, match="config.json is unreadable"):
        RunDir(tmp_path / "r", {"a": 1})


def test_budget_miss_says_why():
    assert budget_miss(1.08e5, 1e5, 1.0) is None  # within 10%
    at_limit = budget_miss(2.65e5, 2e4, 0.125)
    assert "+1225% off the target 20,000" in at_limit and "c = 0.125" in at_limit and "lower --rho" in at_limit
    assert "higher --rho" in budget_miss(1e4, 2e4, 8.0)
    assert "departs from the calibrated QReLU estimate" in budget_miss(1.5e5, 1e5, 0.7)


def test_choose_rho_skips_a_silent_network(monkeypatch):
    """A silent QReLU network can match a chance-level ANN's accuracy; it must not be chosen (nothing to train)."""
    table = {0.5: (0.10, 0.0), 1.0: (0.10, 500.0), 2.0: (0.30, 900.0)}
    monkeypatch.setattr(pipeline, "qrelu_network", lambda ann, rho, timing: rho)
    monkeypatch.setattr(pipeline, "estimate", lambda rho, *a, **k: (*table[rho], None))
    rho, trials = choose_rho(None, None, None, 10, list(table), ann_acc=0.10)
    assert rho == 1.0 and [t["rho"] for t in trials] == [0.5, 1.0]


def test_results_files_are_as_readable_as_other_files(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the result gets the usual 0666 & ~umask, like the plots."""
    import os

    from synopt.runs import write_json

    umask = os.umask(0o022)
    os.umask(umask)
    path = write_json(tmp_path / "m.json", {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
