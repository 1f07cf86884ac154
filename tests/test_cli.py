"""The command line: help, version, count, zoo, train on digits, and one-line errors for user mistakes."""

import json
import subprocess
import sys

import pytest
import torch

import synopt
from synopt import zoo
from synopt.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "synopt.cli", *args], capture_output=True, text=True, timeout=300)


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and synopt.__version__ in capsys.readouterr().out
    assert main(["data", "list"]) == 0 and "fashion-mnist" in capsys.readouterr().out
    for cmd in (["--help"], ["count", "--help"], ["zoo", "list", "--help"], ["train", "--help"], ["data", "list", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
        assert "usage: synopt" in capsys.readouterr().out


def test_count_vgg11_matches_table1(tmp_path, capsys):
    out = tmp_path / "vgg11.json"
    assert main(["count", "--model", "vgg11", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Omega_total(1) = 249,856" in text and "Omega_balance(1) = 10" in text
    d = json.loads(out.read_text())
    assert d["totals"]["omega_total_1"] == 249_856 and len(d["layers"]) == 10
    assert d["totals"]["macs"] == sum(w["macs"] for w in d["weights"])


def test_count_eq7_resnet18(capsys):
    assert main(["count", "--model", "resnet18", "--convention", "eq7"]) == 0
    assert "Omega_syn(1) = 553,730,048" in capsys.readouterr().out


def test_count_custom_input_and_chip_energy(capsys):
    assert main(["count", "--model", "digitsnet", "--input", "1x16x16", "--e-ac", "2.0"]) == 0
    text = capsys.readouterr().out
    assert "input (1, 16, 16)" in text
    assert "E_AC 2 pJ" in text


def test_train_digits_writes_run_folder_and_measures(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(run_dir), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "measured SynOps/inference" in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["model"] == "digitsnet" and config["config"]["train"]["epochs"] == 2
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["synops_per_inference"] > 0
    assert (run_dir / "model.pt").exists() and (run_dir / "checkpoints" / "last.pt").exists()
    # more epochs in the same folder is another run (its cosine schedule differs from epoch 1 on): refused
    assert main(["train", "--epochs", "3", "--out", str(run_dir), "--quiet"]) == 2
    assert "differs in train" in capsys.readouterr().err
    assert [e["epoch"] for e in json.loads((run_dir / "metrics.json").read_text())["history"]] == [1, 2]
    assert main(["train", "--epochs", "2", "--out", str(run_dir), "--quiet"]) == 0  # the same command: resumed
    # measured count on the trained checkpoint through `synopt count`
    assert main(["count", "--model", "digitsnet", "--checkpoint", str(run_dir / "model.pt"), "--dataset", "digits",
                 "--samples", "50"]) == 0
    assert "measured SynOps/inference" in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    (["count", "--model", "nosuchnet"], "nosuchnet"),
    (["count", "--model", "vgg11", "--input", "3x32"], "CxHxW"),
    (["count", "--model", "vgg11", "--input", "1x8x8"], "input"),
    (["count", "--model", "digitsnet", "--checkpoint", "/nonexistent/ck.pt", "--dataset", "digits"],
     "/nonexistent/ck.pt"),
    (["count", "--model", "digitsnet", "--checkpoint", "/nonexistent/ck.pt"], "give --dataset NAME too"),
    (["count", "--model", "cnn7", "--dataset", "digits"], "give --input 1x8x8"),
    (["count", "--model", "digitsnet", "--dataset", "digits", "--samples", "0"], "--samples must be >= 1, got 0"),
    (["count", "--model", "digitsnet", "--e-mac", "0"], "--e-mac is an energy per operation"),
    (["train", "--epochs", "0", "--out", "OUT"], "--epochs must be >= 1, got 0"),
    (["train", "--train-samples", "0", "--out", "OUT"], "--train-samples must be >= 1, got 0"),
    (["train", "--dataset", "mnist", "--data-root", "/nonexistent/root", "--out", "OUT"], "/nonexistent/root"),
    (["count", "--model", "vgg11", "--energy-model", "7nm"], "7nm"),
])
def test_user_errors_are_one_line(args, needle, tmp_path):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    r = run(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert needle in r.stderr


def test_bad_checkpoint_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run("count", "--model", "digitsnet", "--checkpoint", str(bad), "--dataset", "digits")
    assert r.returncode == 2 and "weights-only" in r.stderr and "Traceback" not in r.stderr
    torch.save({"state_dict": zoo.build("digitsnet", num_classes=5).state_dict()}, tmp_path / "five.pt")
    r = run("count", "--model", "digitsnet", "--checkpoint", str(tmp_path / "five.pt"), "--dataset", "digits")
    assert r.returncode == 2 and "does not fit 'digitsnet'" in r.stderr and "Traceback" not in r.stderr


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "vgg11" in out and "404,463,616" in out and "resnet18" in out


def test_count_onnx_matches_the_zoo_model(tmp_path, capsys):
    import torch

    from synopt import zoo

    model = zoo.build("digitsnet").eval()
    path = tmp_path / "d.onnx"
    torch.onnx.export(model, (torch.rand(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})
    out_onnx, out_zoo = tmp_path / "onnx.json", tmp_path / "zoo.json"
    assert main(["count", "--onnx", str(path), "--json", str(out_onnx)]) == 0
    assert main(["count", "--model", "digitsnet", "--json", str(out_zoo)]) == 0
    a, b = json.loads(out_onnx.read_text())["totals"], json.loads(out_zoo.read_text())["totals"]
    for key in ("macs", "omega_syn_1", "omega_total_1", "omega_balance_1", "neurons"):
        assert a[key] == b[key], key
    assert main(["count", "--model", "digitsnet", "--onnx", str(path)]) == 2
