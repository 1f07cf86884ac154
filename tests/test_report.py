"""The comparison report: verdict numbers on hand-made rows, a self-contained HTML file, plots, bad input, and a
headless-Chromium check that the page loads and every embedded image decodes."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from synopt.compare import plots, report
from synopt.compare.report import ReportInputError, verdict, verdict_data, write_report

NASTY = "<script>alert('x')</script> & \"quotes\""


def _row(run, route, method, label, accuracy, synops, *, intensity=None, name=None, seed=0, point=0, T=None,
         **extra):
    row = {"run": run, "run_dir": f"runs/{run}", "point": point, "status": "ok", "error": None, "route": route,
           "method": method, "label": label, "intensity": intensity, "intensity_name": name, "surrogate": None,
           "penalty": None, "p": None, "timesteps": T, "seed": seed, "accuracy": accuracy, "synops": synops,
           "e_snn_j": None if synops is None else 0.9e-12 * synops, "energy_rel": None, "e_ann_j": 4.6e-12 * 1e5,
           "macs": 100_000, "synops_per_mac": None if synops is None else synops / 1e5, "dead_rate": None,
           "R": None, "near_zero_weights": None, "wall_time_s": 1.0}
    row.update(extra)
    return row


def _direct(run, label, lam, seed, acc, syn, dead):
    return _row(run, "direct", "syn" if "syn" in label else "total", label, acc, syn, intensity=lam,
                name="lambda_norm", seed=seed, T=1, penalty="syn" if "syn" in label else "total", p=1.0,
                surrogate="s2nn", dead_rate=dead, R=0.1, near_zero_weights=0.01 * lam)


def _conv(point, acc, syn, target):
    return _row("conv-s0", "conversion", "qrelu", "QReLU T=10", acc, syn, intensity=target, name="target_synops",
                point=point, T=10, near_zero_weights=0.02)


def make_rows() -> list[dict]:
    """Seed means: Ω_syn λ'=1 .96 / 21,000; Ω_syn λ'=4 .93 / 9,000; Ω_total λ'=4 .955 / 30,000;
    QReLU 1e5 .965 / 100,000; QReLU 5e4 .945 / 50,000; baseline .90 / 150,000; ANN .98 at 100,000 MACs."""
    return [
        _direct("syn-l1-s0", "Ω_syn p=1", 1.0, 0, 0.97, 20_000, 0.10),
        _direct("syn-l1-s1", "Ω_syn p=1", 1.0, 1, 0.95, 22_000, 0.12),
        _direct("syn-l4-s0", "Ω_syn p=1", 4.0, 0, 0.93, 8_000, 0.30),
        _direct("syn-l4-s1", "Ω_syn p=1", 4.0, 1, 0.93, 10_000, 0.32),
        _direct("total-l4-s0", "Ω_total p=1", 4.0, 0, 0.955, 30_000, 0.20),
        _conv(0, 0.965, 100_000, 1e5),
        _conv(1, 0.945, 50_000, 5e4),
        _row("conv-s0", "conversion", "baseline", "conversion baseline T=10", 0.90, 150_000, point=-1, T=10),
        _row("ann-s0", "ann", "ann", "ANN (ReLU)", 0.98, None),
        {**_row("syn-l64-s0", "direct", "syn", None, None, None), "status": "failed", "error": NASTY},
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Verdict
# ---------------------------------------------------------------------------------------------------------------------


def test_group_rows_means_and_standard_errors():
    groups = {(g["label"], g["intensity"]): g for g in plots.group_rows(make_rows())}
    g = groups[("Ω_syn p=1", 1.0)]
    assert g["n"] == 2 and g["seeds"] == [0, 1]
    assert g["accuracy"] == pytest.approx(0.96)
    assert g["accuracy_sem"] == pytest.approx(0.01)  # std([.97, .95], ddof=1) / sqrt(2)
    assert g["synops"] == pytest.approx(21_000)
    assert ("None", None) not in groups and (None, None) not in groups  # the failed row is no group
    assert [g["route"] for g in plots.group_rows(make_rows())][0] == "direct"


def test_verdict_numbers_on_hand_made_rows():
    d = verdict_data(make_rows(), margins=(0.0, 0.01, 0.03, 0.04))
    assert d["status"] == "ok" and d["failed"] == 1 and d["routes"] == ["conversion", "direct"]
    assert d["best_accuracy"] == pytest.approx(0.965)
    at_best, one, three, four = d["thresholds"]
    # only QReLU 1e5 reaches 96.5%; the direct route cannot; as many SynOps as the ANN has MACs
    assert at_best["winner"]["label"] == "QReLU T=10" and at_best["winner"]["synops"] == 100_000
    assert at_best["other"] is None and at_best["other_best"]["accuracy"] == pytest.approx(0.96)
    assert at_best["vs_ann"] == pytest.approx(1.0)
    # ≥ 95.5%: Ω_syn λ'=1 (21,000) beats QReLU 1e5 (100,000) and the ANN (100,000 MACs)
    assert one["winner"]["label"] == "Ω_syn p=1" and one["winner"]["intensity"] == 1.0
    assert one["other"]["intensity"] == 1e5
    assert one["vs_other"] == pytest.approx(100_000 / 21_000)
    assert one["vs_ann"] == pytest.approx(100_000 / 21_000)
    # ≥ 93.5%: QReLU 5e4 (94.5%) is the conversion route's cheapest there
    assert three["winner"]["synops"] == pytest.approx(21_000)
    assert three["vs_other"] == pytest.approx(50_000 / 21_000)
    # ≥ 92.5%: Ω_syn λ'=4 (9,000)
    assert four["winner"]["intensity"] == 4.0 and four["vs_other"] == pytest.approx(50_000 / 9_000)

    text = "\n".join(verdict(make_rows(), margins=(0.0, 0.01, 0.03, 0.04)))
    assert "At ≥ 95.50% accuracy" in text
    assert "lowest-energy model is Ω_syn p=1 (lambda_norm = 1, T = 1, 2 seeds mean" in text
    assert "21,000 SynOps per inference" in text
    assert f"{100_000 / 21_000:.3g}× fewer than the best conversion model there, QReLU T=10" in text
    assert f"{50_000 / 9_000:.3g}× fewer than the best conversion model" in text
    assert "the direct route does not reach this accuracy" in text
    assert "as many as the ANN's 100,000 MACs" in text
    assert "The ANN reaches 98.00%" in text
    assert "1 failed model(s)" in text
    assert "nan" not in text.lower()


def test_verdict_one_route_all_failed_and_nans():
    direct_only = [r for r in make_rows() if r["route"] == "direct"]
    text = verdict(direct_only)
    assert text[0] == "Only the direct route has results: no comparison between routes."
    assert "not reach" not in " ".join(text) and "conversion" not in " ".join(text)

    failed = [{**r, "status": "failed", "error": "boom"} for r in make_rows()[:2]]
    assert verdict(failed) == ["All 2 runs failed: no verdict (see the failed runs below)."]
    assert verdict([]) == ["The sweep holds no results yet: no verdict."]

    nans = [_row("a", "direct", "syn", "Ω_syn p=1", math.nan, 5.0), _row("b", "direct", "syn", "Ω_syn p=1", 0.9, None),
            _row("c", "conversion", "qrelu", "QReLU T=10", 0.8, float("nan"))]
    assert "No model has both a finite accuracy and SynOps" in verdict(nans)[0]
    mixed = nans + [_row("d", "direct", "syn", "Ω_syn p=1", 0.91, 1000.0, intensity=2.0)]
    text = " ".join(verdict(mixed))
    assert "0 failed model(s) and 3 without a finite accuracy or SynOps" in text
    assert "1,000 SynOps" in text and "nan" not in text.lower()


def test_verdict_of_one_model_and_of_an_ann_alone():
    """One SNN model wins every threshold: one sentence that says so, not the same sentence per threshold; an ANN
    run folder alone has no SNN to judge."""
    ann = _row("ann-s0", "ann", "ann", "ANN (ReLU)", 0.95, None)
    one = verdict([ann, _row("d", "direct", "syn", "Ω_syn p=1", 0.91, 1000.0, intensity=2.0)])
    sentences = [s for s in one if s.startswith("At ≥")]
    assert len(sentences) == 1 and sentences[0].endswith("(also the lowest-energy model within 1 and 3 point(s) of "
                                                          "the best).")
    assert verdict([ann]) == ["Only the ANN is here (95.00% with 100,000 MACs per inference), no SNN: no verdict."]


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------


def test_row_plots_write_png_and_svg_or_nothing(tmp_path):
    rows = make_rows()
    for r in rows:
        r["energy_rel"] = r["synops"] / 150_000 if r["synops"] else None
    for fn in (plots.plot_tradeoff, plots.plot_accuracy_vs_synops, plots.plot_dead_rate,
               plots.plot_near_zero_weights):
        paths = fn(rows, tmp_path / fn.__name__)
        assert [p.suffix for p in paths] == [".png", ".svg"], fn.__name__
        assert all(p.stat().st_size > 1000 for p in paths)
        assert fn([], tmp_path / "empty") == []
    assert plots.plot_dead_rate([r for r in rows if r["route"] == "conversion"], tmp_path / "none") == []
    assert not list(tmp_path.glob("empty*")) and not list(tmp_path.glob("none*"))
    assert plots.plot_synops_per_layer({"a": {"1": 10.0, "2": 5.0}, "b": {"1": 2.0}}, tmp_path / "layers")
    assert plots.plot_accuracy_per_step([("x", [0.1, 0.5, 0.9]), ("x", [0.2, 0.6])], tmp_path / "steps")


def _direct_metrics() -> dict:
    return {"synops_per_layer": {"a": 100.0, "b": 20.0}, "firing_rate": {"a": 0.1, "b": 0.2},
            "e_snn_per_layer_j": {"a": 9e-11, "b": 1.8e-11}, "dead_rate": 0.2,
            "accounting": {"layers": [{"name": "a", "neurons": 100, "synapses": 1000.0, "psi_mean": 10.0},
                                      {"name": "b", "neurons": 50, "synapses": 100.0, "psi_mean": 2.0}]}}


def test_layer_shares_follow_the_definitions():
    s = plots.layer_shares(_direct_metrics())
    assert s["layers"] == ["a", "b"]
    allf, meas = s["all firing"], s["measured"]
    assert allf["E_SNN"] == pytest.approx([1000 / 1100, 100 / 1100]) == allf["Ω_syn"]
    assert allf["Ω_total"] == pytest.approx([100 / 150, 50 / 150])
    assert allf["Ω_balance"] == pytest.approx([0.5, 0.5])
    assert meas["E_SNN"] == pytest.approx([100 / 120, 20 / 120]) == meas["Ω_syn"]
    assert meas["Ω_total"] == pytest.approx([0.5, 0.5])  # 100·0.1 and 50·0.2 spikes
    assert meas["Ω_balance"] == pytest.approx([1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="accounting"):
        plots.layer_shares({"firing_rate": {}})


# ---------------------------------------------------------------------------------------------------------------------
# The report of a hand-made sweep folder
# ---------------------------------------------------------------------------------------------------------------------


def _point(label, acc, syn, steps):
    return {"label": label, "sim_accuracy": acc, "sim_synops": syn,
            "accuracy_per_step": [acc * (t + 1) / steps for t in range(steps)],
            "synops_per_layer": {"a": 0.9 * syn, "b": 0.1 * syn}}


def make_sweep(folder: Path) -> Path:
    rows = make_rows()
    rows[4]["label"] = "Ω_total p=1"
    study = {"name": f"demo {NASTY}", "model": "digitsnet", "dataset": "digits", "seeds": [0, 1]}
    reference = {"run": "syn-l0-s0", "e_snn_j": 0.9e-12 * 40_000, "kind": "direct-unpenalised"}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"study": study, "reference": reference, "rows": rows}))
    (folder / "results.csv").write_text("run\n")
    conv = folder / "runs" / "conv-s0"
    conv.mkdir(parents=True)
    (conv / "config.json").write_text(json.dumps({"config": {"command": "convert"}}))
    (conv / "metrics.json").write_text(json.dumps({
        "macs": 100_000, "baseline": _point("baseline", 0.90, 150_000, 10),
        "points": [_point("target=1e5", 0.965, 100_000, 10), _point("target=5e4", 0.945, 50_000, 10)]}))
    direct = folder / "runs" / "syn-l1-s0"
    direct.mkdir(parents=True)
    (direct / "config.json").write_text(json.dumps({"config": {"command": "finetune --direct"}}))
    (direct / "metrics.json").write_text(json.dumps(_direct_metrics()))
    return folder


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    sweep = make_sweep(root / "sweep")
    out = write_report(sweep, root / "out" / "report.html", root / "md" / "report.md")
    return {"sweep": sweep, "html": out, "md": root / "md" / "report.md", "root": root}


PLOT_NAMES = ("tradeoff", "accuracy_vs_synops", "dead_rate", "near_zero_weights", "synops_per_layer",
              "accuracy_per_step", "layer_shares")


def test_report_is_self_contained_and_embeds_every_plot(sweep_report):
    page = sweep_report["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)  # nothing fetched, only data: URIs
    assert "<link" not in page and not re.search(r"<script[^>]*\ssrc=", page)
    imgs = re.findall(r'<img class="plot" alt="[^"]*" src="data:image/png;base64,[A-Za-z0-9+/=]+">', page)
    assert len(imgs) == len(PLOT_NAMES)
    for name in PLOT_NAMES:
        assert f'id="plot-{name}"' in page
    assert f'data-images-total="{len(PLOT_NAMES)}"' in page
    # tables and verdict
    assert "Best point per method" in page and "Curve scores" in page and "Failed runs" in page
    assert "Energy reference: the unpenalised direct SNN" in page and "run syn-l0-s0" in page
    assert "At ≥ 95.50% accuracy" in page
    # syn-l1-s1, syn-l4-s0, syn-l4-s1 and total-l4-s0 have no folder: said, not fatal
    assert "4 run folder(s) without a readable metrics.json" in page


def test_report_escapes_every_string(sweep_report):
    page = sweep_report["html"].read_text()
    assert NASTY not in page and "<script>alert" not in page
    assert html_escaped(NASTY) in page
    assert page.count("<script>") == 1  # only the image-check script of the report itself


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


def test_markdown_report_links_plots_written_beside_it(sweep_report):
    md = sweep_report["md"].read_text()
    links = re.findall(r"\]\((report_plots/[^)]+)\)", md)
    assert len(links) == 2 * len(PLOT_NAMES)
    for link in links:
        assert (sweep_report["md"].parent / link).stat().st_size > 1000
    assert "## Verdict" in md and "| route | label |" in md


def test_bad_input_names_the_folder_and_writes_nothing(tmp_path):
    out = tmp_path / "out" / "report.html"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportInputError, match=r"empty holds no results\.json .* no metrics\.json \+ config\.json"):
        write_report(empty, out)
    half = tmp_path / "half"
    half.mkdir()
    (half / "metrics.json").write_text("{}")
    with pytest.raises(ReportInputError, match=r"run folder .*half has no config\.json"):
        write_report(half, out)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    with pytest.raises(ReportInputError, match=r"broken.results\.json is not valid JSON"):
        write_report(broken, out)
    (broken / "results.json").write_text(json.dumps({"study": {}}))
    with pytest.raises(ReportInputError, match="no 'rows' list"):
        write_report(broken, out)
    with pytest.raises(ReportInputError, match="is not a folder"):
        write_report(tmp_path / "missing", out)
    assert not out.parent.exists()
    assert report.main([str(empty), "--html", str(out)]) == 2


def test_a_failure_while_writing_leaves_the_old_report(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path / "sweep")
    out = tmp_path / "report.html"
    out.write_text("old")

    def boom(source, folder):
        (folder / "tradeoff.png").write_bytes(b"half a plot")
        raise RuntimeError("boom")

    monkeypatch.setattr(report, "make_plots", boom)
    with pytest.raises(RuntimeError, match="boom"):
        write_report(sweep, out, tmp_path / "md" / "report.md")
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "sweep"]


def test_single_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"command": "convert", "method": "qrelu",
                                                            "timesteps": 10, "seed": 0}}))
    (run / "metrics.json").write_text(json.dumps({
        "macs": 100_000, "ann_accuracy": 0.97, "baseline": _point("baseline", 0.90, 150_000, 10),
        "points": [{**_point("target=1e5", 0.965, 100_000, 10), "target": 1e5}]}))
    out = write_report(run, tmp_path / "r.html")
    page = out.read_text()
    assert "synopt report: run run" in page
    assert "Only the conversion route has results" in page
    assert 'id="plot-accuracy_per_step"' in page and 'id="plot-synops_per_layer"' in page


def test_all_failed_sweep_still_reports(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    rows = [{**r, "status": "failed", "error": "OOM"} for r in make_rows()[:3]]
    (sweep / "results.json").write_text(json.dumps({"study": {}, "reference": None, "rows": rows}))
    page = write_report(sweep, tmp_path / "r.html").read_text()
    assert "All 3 runs failed: no verdict" in page
    assert "Energy reference: none" in page
    assert "<img" not in page and 'data-images-total="0"' in page


# ---------------------------------------------------------------------------------------------------------------------
# A real browser
# ---------------------------------------------------------------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or (shutil.which("/usr/bin/chromium"))


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_chromium_loads_the_report_and_decodes_every_image(sweep_report, tmp_path):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           sweep_report["html"].resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert f'data-images-ok="{len(PLOT_NAMES)}"' in body, body
    assert f'data-images-total="{len(PLOT_NAMES)}"' in body
    assert len(re.findall(r'<img class="plot"', dom)) == len(PLOT_NAMES)
    assert "lowest-energy model is Ω_syn p=1" in dom
