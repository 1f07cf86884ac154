"""`synopt convert` / `synopt simulate` end to end on the embedded digits data."""

import json
import subprocess
import sys

import pytest
import torch

from synopt.cli import main
from synopt.simulate.reload import simulate_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "run"
    code = main(["convert", "--model", "digitsnet", "--dataset", "digits", "--train-epochs", "12",
                 "--target-synops", "6e4", "--epochs", "4", "--lr", "1e-2", "--timesteps", "6", "--samples", "200",
                 "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_convert_writes_a_complete_run_folder(run_dir):
    for name in ("config.json", "metrics.json", "summary.md", "layers.txt", "snn/spec.json", "snn/weights.pt",
                 "plots/accuracy_vs_synops.png", "plots/accuracy_per_step.svg", "plots/synops_per_layer.png",
                 "source/ann.pt", "points/point0.pt"):
        assert (run_dir / name).exists(), name
    m = json.loads((run_dir / "metrics.json").read_text())
    point = m["points"][0]
    assert len(point["accuracy_per_step"]) == 6
    # the simulated SynOps agree with the QReLU estimate (count coding) and are calibrated onto the target
    assert point["sim_synops"] == pytest.approx(point["qrelu_synops"], rel=0.05)
    assert point["sim_synops"] == pytest.approx(6e4, rel=0.1)
    assert m["macs"] == 84_224
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["target_synops"] == 6e4 and config["source"]["name"] == "digitsnet"


def test_simulate_reloads_the_snn(run_dir, tmp_path):
    out = tmp_path / "sim.json"
    assert main(["simulate", str(run_dir / "snn"), "--timesteps", "6", "--samples", "200", "--quiet",
                 "--json", str(out)]) == 0
    sim = json.loads(out.read_text())
    m = json.loads((run_dir / "metrics.json").read_text())
    assert sim["synops"] == pytest.approx(m["points"][0]["sim_synops"], rel=1e-6)
    assert sim["accuracy"] == pytest.approx(m["points"][0]["sim_accuracy"])
    signed = tmp_path / "signed.json"  # the same weights with the biases at the first/last step: another SNN
    assert main(["simulate", str(run_dir / "snn"), "--timesteps", "6", "--samples", "200", "--quiet",
                 "--bias-timing", "signed", "--json", str(signed)]) == 0
    assert json.loads(signed.read_text())["synops"] != pytest.approx(sim["synops"], rel=1e-6)


@pytest.mark.parametrize("args, needle", [
    (["convert", "--model", "digitsnet", "--out", "OUT"], "--target-synops"),
    (["convert", "--onnx", "/nonexistent/model.onnx", "--target-synops", "1e5", "--out", "OUT"],
     "/nonexistent/model.onnx"),
    (["convert", "--model", "digitsnet", "--method", "qrelu", "--target-synops", "-3", "--out", "OUT"], "positive"),
    (["convert", "--model", "cnn7", "--dataset", "digits", "--target-synops", "1e5", "--out", "OUT"], "expects input"),
    (["simulate", "/nonexistent/snn"], "spec.json"),
    (["convert", "--model", "digitsnet", "--target-synops", "1e5", "--target-fraction", "0.5", "--out", "OUT"],
     "one of --target-synops"),
    (["convert", "--model", "digitsnet", "--target-fraction", "1.5", "--out", "OUT"], "(0, 1]"),
    (["convert", "--model", "digitsnet", "--target-synops", "1e5", "--target-control", "2", "--out", "OUT"],
     "gain in [0, 1]"),
    (["convert", "--model", "digitsnet", "--target-synops", "1e5", "--epochs", "2", "--time-aware-qat",
      "--time-aware-epochs", "3", "--out", "OUT"], "between 1 and --epochs (2)"),
    (["convert", "--model", "digitsnet", "--target-synops", "1e5", "--time-aware-epochs", "1", "--out", "OUT"],
     "add --time-aware-qat"),
    (["convert", "--model", "digitsnet", "--target-synops", "1e5", "--time-aware-samples", "50", "--out", "OUT"],
     "--time-aware-samples needs time-aware QAT"),
    (["convert", "--model", "digitsnet", "--target-synops", "1e5", "--time-aware-qat", "--time-aware-samples", "0",
      "--out", "OUT"], "--time-aware-samples must be at least 1, got 0"),
    (["convert", "--model", "digitsnet", "--target-synops", "1e5", "--schedule", "2", "--halve-from", "previous",
      "--out", "OUT"], "--halve-from: invalid choice: 'previous'"),
    (["convert", "--model", "mnistdvs", "--dataset", "nmnist", "--target-synops", "1e5", "--event-augment", "jitter",
      "--out", "OUT"], "--event-augment: invalid choice: 'jitter'"),
    (["convert", "--model", "digitsnet", "--target-synops", "1e5", "--bias-timing", "late", "--out", "OUT"],
     "--bias-timing: invalid choice: 'late'"),
])
def test_convert_user_errors(args, needle, tmp_path):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    r = subprocess.run([sys.executable, "-m", "synopt.cli", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists(), "a refused run must not leave a run folder behind"


class _Bytes255(torch.nn.Module):
    """A model 'in the wild' that expects raw 0..255 pixels."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x / 255.0)


def test_onnx_with_input_range_and_robust_scaling(run_dir, tmp_path):
    from synopt import zoo
    from synopt.runs import load_checkpoint

    net = zoo.build("digitsnet")
    net.load_state_dict(load_checkpoint(run_dir / "source" / "ann.pt")["state_dict"])
    path = tmp_path / "bytes.onnx"
    torch.onnx.export(_Bytes255(net).eval(), (torch.rand(1, 1, 8, 8) * 255,), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    out = tmp_path / "scale"
    assert main(["convert", "--onnx", str(path), "--input-range", "0,255", "--method", "scale", "--timesteps", "32",
                 "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["ann_accuracy"] > 0.85  # the folded 0..255 convention gives the trained ANN back on 0..1 data
    assert m["points"][0]["sim_accuracy"] > m["ann_accuracy"] - 0.05
    spec = json.loads((out / "snn" / "spec.json").read_text())
    assert spec["encoding"] == "rate" and spec["prepare"]["input_convention"]["input_range"] == [0.0, 255.0]
    out_rho = tmp_path / "rho"
    assert main(["convert", "--onnx", str(path), "--input-range", "0,255", "--method", "rho", "--timesteps", "8",
                 "--samples", "100", "--out", str(out_rho), "--quiet"]) == 0
    pts = json.loads((out_rho / "metrics.json").read_text())["points"]
    syn = [p["sim_synops"] for p in pts]
    assert [p["rho"] for p in pts] == sorted(p["rho"] for p in pts) and syn == sorted(syn)  # more rho, more SynOps


def test_torchvision_resnet18_converts(tmp_path):
    """A stock torchvision model (one ReLU shared per block, max pooling, BN, 3 channels) on grayscale digits."""
    import torchvision

    torch.manual_seed(0)
    ck = tmp_path / "rn18.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), ck)
    out = tmp_path / "run"
    assert main(["convert", "--torchvision", "resnet18", "--checkpoint", str(ck), "--num-classes", "10",
                 "--input", "3x8x8", "--grayscale-to-rgb", "--dataset", "digits", "--method", "rho", "--rho", "1",
                 "--timesteps", "2", "--samples", "20", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    notes = " ".join(m["notes"])
    assert "one_module_per_call_site" in notes and "replace_maxpool" in notes and "fold_batchnorm" in notes
    assert len(m["baseline"]["firing_rate"]) == 17  # torchvision resnet18: 17 ReLU call sites, each its own layer
    r = subprocess.run([sys.executable, "-m", "synopt.cli", "convert", "--torchvision", "resnet18", "--checkpoint",
                        str(ck), "--num-classes", "100", "--dataset", "digits", "--method", "rho", "--out",
                        str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not fit torchvision 'resnet18'" in r.stderr


def test_target_fraction_halves_the_starting_synops(tmp_path):
    """Step 3a of 003_* section 2.4.2: the first target is half the QReLU network's SynOps at the chosen rho."""
    from synopt.convert.pipeline import ConvertConfig, run_conversion
    from synopt.convert.source import ModelSource

    first = tmp_path / "ann"
    main(["convert", "--model", "digitsnet", "--dataset", "digits", "--train-epochs", "8", "--method", "rho",
          "--rho", "1", "--samples", "50", "--out", str(first), "--quiet"])
    m = run_conversion(ConvertConfig(source=ModelSource("zoo", name="digitsnet",
                                                        checkpoint=str(first / "source" / "ann.pt")),
                                     dataset="digits", out=str(tmp_path / "q"), method="qrelu", rho=2.0,
                                     target_fraction=0.5, schedule_points=2, epochs=1, lr=1e-2, timesteps=4,
                                     eval_samples=100, progress=False))
    start = m["start_synops"]
    assert [p["target"] for p in m["points"]] == [pytest.approx(start / 2), pytest.approx(start / 4)]
    assert m["points"][0]["sim_synops"] == pytest.approx(start / 2, rel=0.1)  # calibrated onto the target


def test_halve_from_achieved_halves_what_the_previous_point_reached(tmp_path):
    """--halve-from achieved (step 3a of 003_* section 2.4.2: 'half of the current SynOps'): without calibration a
    point lands where QAT leaves it, and the next target is half the SynOps it reached on the validation data (the
    QReLU estimate of the saved point, recomputed here), not half the previous target."""
    from synopt import data, energy
    from synopt.convert.pipeline import prepare_options
    from synopt.convert.qat import estimate, qrelu_network
    from synopt.graph import prepare
    from synopt.runs import load_checkpoint
    from synopt.zoo import build

    out = tmp_path / "run"
    assert main(["convert", "--model", "digitsnet", "--dataset", "digits", "--train-epochs", "4", "--target-synops",
                 "3e4", "--schedule", "2", "--no-calibrate", "--halve-from", "achieved", "--epochs", "1",
                 "--timesteps", "3", "--samples", "50", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    first, second = m["points"]
    assert "calibration_scale" not in first and first["target"] == 3e4
    assert second["target"] == pytest.approx(first["reached_synops"] / 2)
    assert first["reached_synops"] != pytest.approx(first["target"], rel=1e-3)  # uncalibrated: not the target
    ann = build("digitsnet")
    ann.load_state_dict(load_checkpoint(out / "source" / "ann.pt")["state_dict"])
    qnet = qrelu_network(prepare(ann, **prepare_options({}))[0], m["rho"])
    qnet.load_state_dict(load_checkpoint(out / "points" / "point0.pt")["state_dict"])
    _, reached, _ = estimate(qnet, energy.analyze(qnet.net, m["input_shape"]), data.load("digits", split_seed=0).val,
                             2000)
    assert first["reached_synops"] == pytest.approx(reached, rel=1e-6)


@pytest.mark.parametrize("time_aware_epochs, timing", [(None, "spread"), (1, "signed")])
def test_time_aware_qat_on_static_images_predicts_the_snn_exactly(tmp_path, time_aware_epochs, timing):
    """--time-aware-qat on static images: QAT, rho choice and calibration run the count-coded IF dynamics
    (temporal.CountCoded), so the time-aware estimate on the test images equals the sinabs simulation exactly;
    with --time-aware-epochs 1 only the last epoch of the point is time-aware, the first trains the static QReLU.
    With --bias-timing signed the estimate, the simulation and the reloaded snn/ all use that timing."""
    out = tmp_path / "run"
    extra = ["--time-aware-epochs", str(time_aware_epochs)] if time_aware_epochs else []
    assert main(["convert", "--model", "digitsnet", "--dataset", "digits", "--train-epochs", "6",
                 "--target-synops", "6e4", "--epochs", "2", "--lr", "1e-2", "--timesteps", "4", "--samples", "150",
                 "--time-aware-qat", *extra, "--bias-timing", timing, "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    p = m["points"][0]
    assert m["temporal_qat"] == {"count_coded_steps": 4, **({"epochs": 1} if time_aware_epochs else {})}
    assert p["qrelu_time_aware_accuracy"] == p["sim_accuracy"]
    assert p["qrelu_time_aware_synops"] == pytest.approx(p["sim_synops"], rel=1e-6)
    assert [row["time_aware"] for row in p["history"]] == ([False, True] if time_aware_epochs else [True, True])
    assert all(row["synops"] > 0 for row in p["history"])
    assert json.loads((out / "snn" / "spec.json").read_text())["bias_timing"] == timing
    assert m["bias_timing"] == timing and f"biases entering `{timing}`" in (out / "summary.md").read_text()
    sim = simulate_run(out / "snn", timesteps=4, samples=150, progress=False)
    assert sim.accuracy == p["sim_accuracy"] and sim.synops == pytest.approx(p["sim_synops"], rel=1e-6)
    if timing != "spread":  # the same weights with the biases spread give another SNN
        spread = simulate_run(out / "snn", timesteps=4, samples=150, bias_timing="spread", progress=False)
        assert spread.synops != pytest.approx(sim.synops, rel=1e-6)
    if time_aware_epochs:
        assert (out / "checkpoints" / "point0-static" / "last.pt").is_file()
        first, last = p["history"]  # the time-aware phase continues the closed loop of the static one
        assert last["target"] == pytest.approx(first["control_gain"] * last["scheduled_target"])


def test_time_aware_samples_train_the_time_aware_epochs_on_a_subset(tmp_path, monkeypatch):
    """--time-aware-samples N: the static epochs see the whole training split, the time-aware ones N count-coded
    images of it (each is T static ones); the run records the number."""
    import synopt.convert.pipeline as pipeline
    from synopt.convert.temporal import CountCoded

    real, seen = pipeline.finetune, []

    def record(qnet, train, *args, **kwargs):
        seen.append(train)
        return real(qnet, train, *args, **kwargs)

    monkeypatch.setattr(pipeline, "finetune", record)
    out = tmp_path / "run"
    assert main(["convert", "--model", "digitsnet", "--dataset", "digits", "--train-epochs", "3",
                 "--target-synops", "6e4", "--epochs", "2", "--timesteps", "3", "--samples", "50",
                 "--time-aware-qat", "--time-aware-epochs", "1", "--time-aware-samples", "40", "--out", str(out),
                 "--quiet"]) == 0
    static, time_aware = seen
    assert not isinstance(static, CountCoded) and len(static) > 40
    assert len(time_aware) == 40
    assert json.loads((out / "metrics.json").read_text())["temporal_qat"]["samples"] == 40
    frames, label = time_aware[0]  # T = 3 count-coded frames of one of the static epochs' images
    assert frames.shape[0] == 3 and torch.equal(frames[0], frames[2])
    assert any(torch.allclose(3 * frames[0], static[i][0]) and label == static[i][1] for i in range(len(static)))


def test_an_interrupted_schedule_keeps_its_finished_points(tmp_path, monkeypatch):
    """metrics.json is written after every point of a target schedule, so a run stopped during the second point
    still reports the first; run again with the same configuration and ANN, it keeps that point and goes on."""
    import synopt.convert.pipeline as pipeline

    real, calls = pipeline.finetune, []

    def stop_at_the_second_point(*args, **kwargs):
        calls.append(kwargs["target"])
        if len(set(calls)) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "finetune", stop_at_the_second_point)
    out = tmp_path / "run"
    assert main(["convert", "--model", "digitsnet", "--dataset", "digits", "--train-epochs", "3", "--target-synops",
                 "6e4", "--schedule", "2", "--epochs", "1", "--timesteps", "3", "--samples", "50", "--out", str(out),
                 "--quiet"]) == 130  # synopt: interrupted
    m = json.loads((out / "metrics.json").read_text())
    assert [p["target"] for p in m["points"]] == [6e4]
    assert (out / "points" / "point0.pt").is_file() and not (out / "snn").exists()

    # resumed with the same configuration and ANN: point 0 is kept as it was (no training, no simulation)
    calls.clear()
    monkeypatch.setattr(pipeline, "finetune", lambda *a, **k: calls.append(k["target"]) or real(*a, **k))
    args = ["convert", "--model", "digitsnet", "--dataset", "digits", "--train-epochs", "3", "--target-synops", "6e4",
            "--schedule", "2", "--epochs", "1", "--timesteps", "3", "--samples", "50", "--out", str(out), "--quiet"]
    assert main(args) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["points"][0] == m["points"][0] and 6e4 not in calls
    assert calls == [resumed["points"][1]["target"]] and any(n.startswith("resumed") for n in resumed["notes"])
    assert resumed["ann_fingerprint"] == m["ann_fingerprint"]
    # another configuration in the same folder (here the QAT learning rate) is refused, the run left as it was
    calls.clear()
    assert main([*args, "--lr", "3e-4"]) == 2
    assert json.loads((out / "metrics.json").read_text()) == resumed and not calls


@pytest.mark.parametrize("flag, expected", [([], "prefix"), (["--event-augment", "prefix+shift"], "prefix+shift"),
                                            (["--event-augment", "none"], None)])
def test_event_augment_reaches_the_conversion_config(flag, expected, tmp_path, monkeypatch):
    import synopt.convert.pipeline as pipeline

    seen = []

    def record(cfg):
        seen.append(cfg)
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "summary.md").write_text("recorded")
        return {"points": []}

    monkeypatch.setattr(pipeline, "run_conversion", record)
    assert main(["convert", "--model", "mnistdvs", "--dataset", "nmnist", "--target-synops", "1e5", *flag,
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert seen[0].event_augment == expected
