"""Study files, sweeps (inline, process pool, Ray), resume after a kill, failed runs, the results table."""

from __future__ import annotations

import csv
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synopt.cli import main
from synopt.compare.results import COLUMNS, near_zero_fraction
from synopt.compare.study import PAPER_LAMBDAS, StudyError, expand, load_study
from synopt.compare.sweep import SweepError, sweep

TINY = """
name = "tiny"
model = "digitsnet"
dataset = "digits"
seeds = [0]
[budget]
epochs = 2
batch_size = 64
[ann]
epochs = 6
lr = 3e-3
[[methods]]
route = "direct"
penalty = "syn"
lambda_norm = [0, 8]
[[methods]]
route = "conversion"
method = "qrelu"
target_synops = 3e4
timesteps = 2
epochs = 1
lr = 1e-2
"""


def _study(tmp_path: Path, text: str = TINY, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def inline_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    return sweep(_study(d), out=d / "out", workers=1, progress=False)


# ---- study files ------------------------------------------------------------------------------------------------------


def test_expand_grid_collapses_unpenalised_runs(tmp_path):
    study = load_study(_study(tmp_path, """
model = "cnn7"
dataset = "fashion-mnist"
seeds = [0, 1]
[[methods]]
route = "direct"
penalty = ["syn", "total", "balance"]
p = [1, 2]
lambda_norm = [0, 4, 16]
[[methods]]
route = "conversion"
method = "qrelu"
target_synops = [1e5, 2e5]
timesteps = [1, 5, 10]
"""))
    plan = expand(study)
    kinds = [s.kind for s in plan]
    # per seed: 1 ANN + (3 penalties x 2 p x 2 lambda' > 0 = 12) + 1 unpenalised + 2 targets (each one QAT run
    # simulated at T = 1, 5, 10)
    assert kinds.count("ann") == 2 and kinds.count("direct") == 2 * 13 and kinds.count("conversion") == 2 * 2
    conv0 = [s for s in plan if s.kind == "conversion"][0]
    assert conv0.params["timesteps"] == 10 and conv0.params["extra_timesteps"] == [1, 5]
    assert conv0.run_id == "conv-qrelu-t100000x1-T1-5-10-s0"
    assert kinds[:2] == ["ann", "ann"]  # ANN runs first: conversions start from them
    assert len({s.run_id for s in plan}) == len(plan)
    conv = [s for s in plan if s.kind == "conversion"]
    assert all(s.needs == f"ann-s{s.seed}" for s in conv)
    none = [s for s in plan if s.kind == "direct" and s.params["penalty"] == "none"]
    assert len(none) == 2 and all(s.params["lambda_norm"] == 0 for s in none)


def test_separate_timesteps_gives_one_run_per_T(tmp_path):
    study = load_study(_study(tmp_path, """
model = "mnistdvs"
dataset = "nmnist"
[[methods]]
route = "conversion"
target_synops = 1e5
timesteps = [5, 10]
separate_timesteps = true
"""))
    conv = [s for s in expand(study) if s.kind == "conversion"]
    assert [(s.params["timesteps"], "extra_timesteps" in s.params) for s in conv] == [(10, False), (5, False)]


def test_default_lambda_grid_is_the_papers(tmp_path):
    study = load_study(_study(tmp_path, 'model="cnn7"\ndataset="mnist"\n[[methods]]\nroute="direct"\n'))
    lams = sorted(s.params["lambda_norm"] for s in expand(study))
    assert lams == sorted(PAPER_LAMBDAS) and len(lams) == 14  # App. A.3 of 000_*


def test_yaml_and_toml_give_the_same_plan(tmp_path):
    yaml_text = """
model: digitsnet
dataset: digits
seeds: [0]
budget: {epochs: 2, batch_size: 64}
ann: {epochs: 6, lr: 0.003}
methods:
  - {route: direct, penalty: syn, lambda_norm: [0, 8]}
  - {route: conversion, method: qrelu, target_synops: 30000.0, timesteps: 2, epochs: 1, lr: 0.01}
"""
    a = expand(load_study(_study(tmp_path, TINY)))
    b = expand(load_study(_study(tmp_path, yaml_text, "study.yaml")))
    assert [s.run_id for s in a] == [s.run_id for s in b]
    assert [s.params for s in a] == [s.params for s in b]


@pytest.mark.parametrize("text, name, message", [
    ('dataset = "digits"\n[[methods]]\nroute = "direct"\n', "s.toml", "missing required key 'model'"),
    ('model = "digitsnet"\ndataset = "digits"\nmethods = []\n', "s.toml", "non-empty list"),
    ('model = "digitsnet"\ndataset = "digits"\n[[methods]]\nroute = "hybrid"\n', "s.toml", "route must be"),
    ('model = "digitsnet"\ndataset = "digits"\n[[methods]]\nroute = "direct"\nlamda = 3\n', "s.toml",
     "unknown key(s) lamda"),
    ('model = "digitsnet"\ndataset = "digits"\n[[methods]]\nroute = "conversion"\n', "s.toml",
     "needs one of target_synops"),
    ('model = "nonet"\ndataset = "digits"\n[[methods]]\nroute = "direct"\n', "s.toml", "nonet"),
    ('model = "digitsnet"\ndataset = "digits"\nseeds = "one"\n[[methods]]\nroute = "direct"\n', "s.toml",
     "seeds must be"),
    ('model = "digitsnet"\n[[[broken', "s.toml", "not valid TOML"),
    ("model: [unclosed", "s.yaml", "not valid YAML"),
    ("model = 1", "s.ini", "unknown study format"),
])
def test_bad_study_files_name_the_problem(tmp_path, text, name, message):
    with pytest.raises(StudyError, match=None) as err:
        load_study(_study(tmp_path, text, name))
    assert message in str(err.value) and name in str(err.value)


def test_cli_sweep_errors_are_one_line(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", str(_study(tmp_path)), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_cli_dry_run_lists_the_plan(tmp_path, capsys):
    assert main(["sweep", str(_study(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ann-s0" in out and "direct-syn-p1-s2nn-lam8-s0" in out and "4 runs" in out


# ---- the results table ------------------------------------------------------------------------------------------------


def test_results_rows_come_from_the_run_folders(inline_sweep):
    res = inline_sweep
    assert sorted(res.ran) == ["ann-s0", "conv-qrelu-t30000x1-T2-s0", "direct-none-s2nn-s0",
                               "direct-syn-p1-s2nn-lam8-s0"] and not res.failed
    rows = {(r["run"], r["point"]): r for r in res.rows}
    ref = rows[("direct-none-s2nn-s0", 0)]
    assert ref["energy_rel"] == 1.0  # the unpenalised direct net is E_baseline (Sec. 4.3 of 000_*)
    m = json.loads((res.path / "runs" / "direct-syn-p1-s2nn-lam8-s0" / "metrics.json").read_text())
    row = rows[("direct-syn-p1-s2nn-lam8-s0", 0)]
    assert row["synops"] == m["sinabs_t1"]["synops"] and row["accuracy"] == m["sinabs_t1"]["accuracy"]
    assert row["e_snn_j"] == pytest.approx(0.9e-12 * row["synops"], rel=1e-12)  # E_AC = 0.9 pJ (cmos45nm)
    assert row["energy_rel"] == pytest.approx(row["e_snn_j"] / ref["e_snn_j"])
    assert row["synops_per_mac"] == pytest.approx(row["synops"] / m["macs"])
    assert row["label"] == "Ω_syn p=1" and row["intensity"] == 8.0 and row["timesteps"] == 1
    conv = json.loads((res.path / "runs" / "conv-qrelu-t30000x1-T2-s0" / "metrics.json").read_text())
    qrow, brow = rows[("conv-qrelu-t30000x1-T2-s0", 0)], rows[("conv-qrelu-t30000x1-T2-s0", -1)]
    assert qrow["synops"] == conv["points"][0]["sim_synops"] and qrow["intensity"] == 3e4
    assert brow["method"] == "baseline" and brow["synops"] == conv["baseline"]["sim_synops"]
    assert qrow["timesteps"] == 2 and qrow["label"] == "QReLU T=2"
    ann = rows[("ann-s0", 0)]
    assert ann["route"] == "ann" and ann["e_ann_j"] == pytest.approx(4.6e-12 * ann["macs"])
    # CSV: the same rows, the documented columns
    with open(res.path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS and len(table) == len(res.rows)
    saved = json.loads((res.path / "results.json").read_text())
    assert saved["reference"]["run"] == "direct-none-s2nn-s0" and len(saved["rows"]) == len(res.rows)
    assert all((res.path / "runs" / r / "sweep.json").is_file() for r in res.ran)


def test_near_zero_fraction_by_hand():
    import torch

    sd = {"conv.weight": torch.tensor([[1.0, 0.0005], [0.5, -0.002]]),  # max 1: 0.0005 < 1e-3 -> 1 of 4
          "conv.bias": torch.zeros(2),  # biases are not weights of the fan-out: ignored
          "fc.weight": torch.tensor([[0.0, 0.0], [0.0, 0.0]])}  # a silent layer: all 4 near zero
    assert near_zero_fraction(sd) == 5 / 8


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    # valid values (the study check passes them) that the run refuses: the pwl surrogate has no alpha
    study = _study(tmp_path, TINY.replace('lambda_norm = [0, 8]', 'lambda_norm = [0, 8]\nsurrogate = "pwl"\n'
                                          'alpha = 0.3').replace("epochs = 6", "epochs = 1"))
    res = sweep(study, out=tmp_path / "out", workers=1, progress=False)
    assert sorted(res.failed) == ["direct-none-pwl-s0", "direct-syn-p1-pwl-lam8-s0"]
    assert sorted(res.ran) == ["ann-s0", "conv-qrelu-t30000x1-T2-s0"]
    failed = [r for r in res.rows if r["status"] == "failed"]
    assert len(failed) == 2 and all("no hyperparameter alpha" in r["error"] for r in failed)
    assert "Traceback" in (res.path / "runs" / "direct-none-pwl-s0" / "error.txt").read_text()
    # the command line: finished runs are skipped, the failed ones retried (and fail again): exit status 1
    assert main(["sweep", str(study), "--out", str(res.path), "--workers", "1", "--quiet"]) == 1
    # no direct reference: energies fall back to the conversion baseline of the same seed
    ref = json.loads((res.path / "results.json").read_text())["reference"]
    assert ref["kind"] == "conversion-baseline"


def test_changed_study_refuses_to_mix_runs(inline_sweep, tmp_path):
    changed = _study(tmp_path, TINY.replace("epochs = 2\n", "epochs = 3\n", 1))
    with pytest.raises(SweepError, match="other parameters"):
        sweep(changed, out=inline_sweep.path, workers=1, progress=False)


def test_killed_sweep_resumes_and_skips_finished_runs(tmp_path, inline_sweep):
    study = _study(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synopt.cli", "sweep", str(study), "--out", str(out), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    ann_marker = out / "runs" / "ann-s0" / "sweep.json"
    while not ann_marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ann_marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no ANN after 240 s"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the parent and its pool workers
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/sweep.json")}
    assert "ann-s0" in finished and len(finished) < 4
    res = sweep(study, out=out, workers=2, progress=False)
    assert sorted(res.skipped) == sorted(finished) and not res.failed
    assert sorted(res.ran + res.skipped) == sorted(inline_sweep.ran)
    for name, mtime in finished.items():  # finished runs were not touched again
        assert (out / "runs" / name / "sweep.json").stat().st_mtime_ns == mtime
    # the pool gives the same numbers as the inline run (seeded, deterministic)
    key = lambda r: (r["run"], r["point"])  # noqa: E731
    for a, b in zip(sorted(res.rows, key=key), sorted(inline_sweep.rows, key=key)):
        assert (a["run"], a["accuracy"], a["synops"]) == (b["run"], b["accuracy"], b["synops"])


def test_ray_local_instance_gives_the_same_results(tmp_path, inline_sweep):
    pytest.importorskip("ray")
    res = sweep(_study(tmp_path), out=tmp_path / "out", ray_address="local", workers=2, progress=False)
    assert sorted(res.ran) == sorted(inline_sweep.ran) and not res.failed
    key = lambda r: (r["run"], r["point"])  # noqa: E731
    for a, b in zip(sorted(res.rows, key=key), sorted(inline_sweep.rows, key=key)):
        assert (a["run"], a["accuracy"], a["synops"], a["energy_rel"]) == \
            (b["run"], b["accuracy"], b["synops"], b["energy_rel"])


def test_report_from_a_real_digits_sweep(inline_sweep, tmp_path, capsys):
    """`synopt report` on the sweep above: the verdict names the measured winner, with the measured numbers."""
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    assert main(["report", str(inline_sweep.path), "-o", str(html), "--markdown", str(md)]) == 0
    text = html.read_text()
    ok = [r for r in inline_sweep.rows if r["status"] == "ok" and r["route"] != "ann"]
    best = max(ok, key=lambda r: r["accuracy"])
    cheapest = min((r for r in ok if r["accuracy"] >= best["accuracy"]), key=lambda r: r["synops"])
    assert cheapest["label"] in text and f"{cheapest['synops']:,.0f} SynOps" in text
    assert text.count("<img") >= 3 and "http://" not in text and "https://" not in text
    assert "Verdict" in md.read_text() and (tmp_path / "r_plots" / "tradeoff.png").is_file()
    assert main(["report", str(inline_sweep.path), "-o", str(tmp_path / "r.pdf")]) == 2
    assert "ending in .html" in capsys.readouterr().err


def test_one_qat_simulated_at_several_T_matches_the_single_T_run(inline_sweep, tmp_path):
    study = _study(tmp_path, TINY.replace("timesteps = 2", "timesteps = [1, 2]"))
    res = sweep(study, out=tmp_path / "out", workers=1, progress=False, only=lambda s: s.kind == "conversion")
    assert sorted(res.ran) == ["ann-s0", "conv-qrelu-t30000x1-T1-2-s0"]
    conv = {(r["label"], r["point"]): r for r in res.rows if r["route"] == "conversion"}
    assert set(conv) == {("QReLU T=1", 0), ("QReLU T=2", 0), ("conversion baseline T=1", -1),
                         ("conversion baseline T=2", -1)}
    single = {(r["label"], r["point"]): r for r in inline_sweep.rows if r["route"] == "conversion"}
    for key, row in single.items():  # T = 2 of the shared run is the T = 2 run, number for number
        assert (conv[key]["accuracy"], conv[key]["synops"]) == (row["accuracy"], row["synops"])
    # count coding at T = 1 with multi-spike IF neurons is the QReLU network itself: SynOps = its estimate
    m = json.loads((res.path / "runs" / "conv-qrelu-t30000x1-T1-2-s0" / "metrics.json").read_text())
    assert conv[("QReLU T=1", 0)]["synops"] == pytest.approx(m["points"][0]["qrelu_synops"], rel=1e-6)


def test_conversion_options_get_their_own_run_folders(tmp_path):
    """A grid over a conversion option (here bias timing and lr) or a non-default neuron option in its own table
    must not collapse onto one run id; two tables that would share a folder with different settings are refused."""
    study = load_study(_study(tmp_path, """
model = "digitsnet"
dataset = "digits"
[[methods]]
route = "conversion"
target_synops = 3e4
bias_timing = ["spread", "signed"]
lr = [1e-3, 1e-2]
[[methods]]
route = "conversion"
target_synops = 3e4
single_spike = true
recalibrate_bn = 2000
"""))
    ids = sorted(s.run_id for s in expand(study) if s.kind == "conversion")
    assert ids == ["conv-qrelu-t30000x1-T10-bias_timing=signed-lr=0.001-s0",
                   "conv-qrelu-t30000x1-T10-bias_timing=signed-lr=0.01-s0",
                   "conv-qrelu-t30000x1-T10-bias_timing=spread-lr=0.001-s0",
                   "conv-qrelu-t30000x1-T10-bias_timing=spread-lr=0.01-s0",
                   "conv-qrelu-t30000x1-T10-recalibrate_bn=2000-single_spike=True-s0"]
    clash = load_study(_study(tmp_path, """
model = "digitsnet"
dataset = "digits"
[[methods]]
route = "conversion"
target_synops = 3e4
epochs = 1
[[methods]]
route = "conversion"
target_synops = 3e4
epochs = 3
"""))
    with pytest.raises(StudyError, match="share the folder conv-qrelu-t30000x1-T10-s0"):
        expand(clash)


def test_direct_run_ids_name_every_grid_axis_and_clashes_are_refused(tmp_path):
    """lr, surrogate and alpha grids give 8 direct runs in 8 folders (they collapsed to 2 before); two tables that
    differ in a scalar would share a folder and are refused; from_ann = "ann" plans the ANN run it needs."""
    study = load_study(_study(tmp_path, """
model = "digitsnet"
dataset = "digits"
[[methods]]
route = "direct"
lambda_norm = 4
lr = [1e-3, 1e-2]
surrogate = ["s2nn", "pwl"]
alpha = [0.25, 0.5]
"""))
    runs = [s for s in expand(study) if s.kind == "direct"]
    assert len({s.run_id for s in runs}) == len(runs) == 8
    assert "direct-syn-p1-pwl-lam4-alpha=0.5-lr=0.01-s0" in {s.run_id for s in runs}
    assert {(s.params["lr"], s.params["surrogate"], s.params["alpha"]) for s in runs} == {
        (lr, sur, a) for lr in (1e-3, 1e-2) for sur in ("s2nn", "pwl") for a in (0.25, 0.5)}
    clash = load_study(_study(tmp_path, """
model = "digitsnet"
dataset = "digits"
[[methods]]
route = "direct"
lambda_norm = 4
[[methods]]
route = "direct"
lambda_norm = 4
lr = 0.1
"""))
    with pytest.raises(StudyError, match="share the folder direct-syn-p1-s2nn-lam4-s0"):
        expand(clash)
    tuned = load_study(_study(tmp_path, """
model = "digitsnet"
dataset = "digits"
[[methods]]
route = "direct"
lambda_norm = 4
from_ann = "ann"
"""))
    plan = {s.run_id: s for s in expand(tuned)}
    assert plan["direct-syn-p1-s2nn-lam4-s0-ft"].needs == "ann-s0" and "ann-s0" in plan


def test_a_sweep_folder_holds_one_study(tmp_path):
    study = _study(tmp_path, """
model = "digitsnet"
dataset = "digits"
[[methods]]
route = "direct"
lambda_norm = 4
""")
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.json").write_text(json.dumps({"study": {"name": "cnn7-fmnist", "model": "cnn7",
                                                            "dataset": "fashion-mnist"}}))
    with pytest.raises(SweepError, match="holds the sweep of another study .name 'cnn7-fmnist', model 'cnn7'"):
        sweep(study, out=other, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(SweepError, match="not empty and holds no sweep"):
        sweep(study, out=foreign, progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SweepError, match="is a file"):
        sweep(study, out=tmp_path / "afile", progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["mine.txt"] and sorted(p.name for p in other.iterdir()) == [
        "study.json"]


@pytest.mark.parametrize("line, needle", [
    ('dataset = "imagenet"', "unknown dataset 'imagenet'"),
    ('[[methods]]\nroute = "direct"\npenalty = "energy"', "penalty must be one of"),
    ('[[methods]]\nroute = "direct"\nsurrogate = "foo"', "surrogate must be one of"),
    ('[[methods]]\nroute = "direct"\np = 0', "methods[1]: p must be a number >= 1, got 0"),
    ('[[methods]]\nroute = "direct"\nlambda_norm = [4, -4]', "lambda_norm must be a number >= 0, got -4"),
    ('[[methods]]\nroute = "direct"\nlambda_norm = []', "lambda_norm is an empty list"),
    ('[[methods]]\nroute = "direct"\nepochs = "one"', "epochs must be an integer >= 1, got 'one'"),
    ('[[methods]]\nroute = "direct"\nepochs = 1.5', "epochs must be an integer >= 1, got 1.5"),
    ('[[methods]]\nroute = "conversion"\ntarget_synops = -3', "target_synops must be a positive number, got -3"),
    ('[[methods]]\nroute = "conversion"\ntarget_synops = 1e5\ntimesteps = 0', "timesteps must be an integer >= 1"),
    ('workers = 0', "workers must be an integer >= 1, got 0"),
    ('[budget]\nlr = "fast"', "budget: lr must be a positive number, got 'fast'"),
])
def test_study_values_are_checked_before_any_run(line, needle, tmp_path):
    base = 'model = "digitsnet"\n' + ('' if line.startswith("dataset") else 'dataset = "digits"\n')
    top, _, tables = line.partition("[")
    text = base + (top if not line.startswith("[") else "") + "\n" + \
        '[[methods]]\nroute = "direct"\nlambda_norm = 4\n' + ("[" + tables if line.startswith("[") else "")
    with pytest.raises(StudyError, match=re.escape(needle)):
        load_study(_study(tmp_path, text))
