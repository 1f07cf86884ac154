"""One self-contained HTML report (and optionally Markdown) of a sweep folder or a single run folder.

``write_report(src, html_out, md_out=None)`` reads ``src/results.json`` (a sweep: study, reference, rows) or, for a
single run folder (``metrics.json`` + ``config.json``), the rows of :func:`synopt.compare.results.rows_from_run`;
draws the plots of :mod:`synopt.compare.plots`; and writes one HTML file with the configuration, the tables, the
plots (base64 PNG, nothing fetched from the network) and a verdict computed from the data (docs/report.md).

``synopt report SRC [-o OUT.html] [--markdown OUT.md]`` (or ``python -m synopt.compare.report SRC [--html OUT.html]
[--md OUT.md]``) does the same from a shell.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from synopt.compare import plots
from synopt.compare.plots import finite, group_rows, num, ok_rows

#: verdict thresholds: within this many accuracy points (fractions) of the best model
MARGINS = (0.0, 0.01, 0.03)
#: accuracy cutoffs of the score table (percent, Table 4 of 000_*), unless the study sets ``cutoffs``
DEFAULT_CUTOFFS = (70, 50)
ROUTE_NAMES = {"direct": "direct", "conversion": "conversion", "ann": "ANN"}


class ReportInputError(ValueError):
    """The report's source is not a sweep folder nor a run folder, or its files cannot be read."""


# ---------------------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Source:
    """What a report is made of: the folder, its kind, the study configuration, the reference and the rows."""

    path: Path
    kind: str  # "sweep" | "run"
    study: dict
    reference: dict | None
    rows: list[dict]
    _metrics: dict = field(default_factory=dict, repr=False)

    def run_path(self, row: dict) -> Path:
        if self.kind == "run":
            return self.path
        return self.path / str(row.get("run_dir") or Path("runs") / str(row.get("run")))

    def metrics(self, row: dict) -> dict | None:
        """The ``metrics.json`` of ``row``'s run folder (cached); None if it is missing or unreadable."""
        path = self.run_path(row) / "metrics.json"
        if path not in self._metrics:
            try:
                self._metrics[path] = json.loads(path.read_text())
            except (OSError, ValueError):
                self._metrics[path] = None
        return self._metrics[path]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path} is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise ReportInputError(f"cannot read {path} ({exc})") from exc


def load_source(src: str | Path) -> Source:
    """Read a sweep folder (``results.json``) or a single run folder (``metrics.json`` + ``config.json``).

    Raises :class:`ReportInputError` naming the folder and what is missing.  Rows without ``energy_rel`` get
    E_SNN / the reference's E_SNN when the sweep names a reference.
    """
    src = Path(src)
    if not src.is_dir():
        raise ReportInputError(f"{src} is not a folder: give a sweep folder (with results.json) or a run folder "
                               "(with metrics.json and config.json)")
    if (src / "results.json").is_file():
        data = _read_json(src / "results.json")
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ReportInputError(f"{src / 'results.json'} holds no 'rows' list (not written by a sweep?)")
        bad = [i for i, r in enumerate(data["rows"]) if not isinstance(r, dict)]
        if bad:
            raise ReportInputError(f"{src / 'results.json'}: row {bad[0]} is not an object")
        study = data.get("study") if isinstance(data.get("study"), dict) else {}
        reference = data.get("reference") if isinstance(data.get("reference"), dict) else None
        if reference is not None and not finite(reference.get("e_snn_j")):
            reference = None  # the sweep found no reference model
        source = Source(src, "sweep", study, reference, [dict(r) for r in data["rows"]])
    elif (src / "metrics.json").is_file() or (src / "config.json").is_file():
        missing = [n for n in ("metrics.json", "config.json") if not (src / n).is_file()]
        if missing:
            raise ReportInputError(f"run folder {src} has no {' and no '.join(missing)} (unfinished run?)")
        try:
            from synopt.compare.results import rows_from_run
        except ImportError as exc:
            raise ReportInputError(f"{src} is a run folder, but reading it needs synopt.compare.results "
                                   f"({exc})") from exc
        try:
            rows = rows_from_run(src)
        except (KeyError, ValueError, OSError) as exc:
            raise ReportInputError(f"cannot read the run folder {src}: {type(exc).__name__}: {exc}") from exc
        config = _read_json(src / "config.json")
        study = config.get("config", config) if isinstance(config, dict) else {}
        source = Source(src, "run", study, None, rows)
    else:
        raise ReportInputError(f"{src} holds no results.json (a sweep folder) and no metrics.json + config.json "
                               "(a run folder); run `synopt sweep`, `synopt convert` or `synopt finetune --direct` first")
    ref_j = num((source.reference or {}).get("e_snn_j"))
    for r in source.rows:
        if not finite(r.get("energy_rel")) and finite(r.get("e_snn_j")) and math.isfinite(ref_j) and ref_j > 0:
            r["energy_rel"] = num(r["e_snn_j"]) / ref_j
    return source


# ---------------------------------------------------------------------------------------------------------------------
# Verdict
# ---------------------------------------------------------------------------------------------------------------------


def _snn_groups(rows: list[dict]) -> list[dict]:
    return [g for g in group_rows(rows) if g["route"] in ("direct", "conversion") and finite(g["synops"])
            and finite(g["accuracy"])]


def params(g: dict) -> str:
    """The parameters of a group that its label does not tell: intensity, T, seeds."""
    bits = []
    if finite(g.get("intensity")):
        bits.append(f"{g.get('intensity_name') or 'intensity'} = {num(g['intensity']):g}")
    if finite(g.get("timesteps")):
        bits.append(f"T = {int(num(g['timesteps']))}")
    n = g.get("n", 1)
    bits.append(f"{n} seed{'s' if n != 1 else ''}" + (" mean" if n > 1 else ""))
    return ", ".join(bits)


def verdict_data(rows: list[dict], margins: Sequence[float] = MARGINS) -> dict:
    """The numbers behind the verdict.

    Models are grouped over seeds (:func:`plots.group_rows`); candidates are the SNN groups (direct, conversion)
    with a finite mean accuracy and SynOps.  For each margin the threshold is best accuracy - margin; the winner is
    the candidate at or above it with the fewest SynOps (= the lowest E_SNN = E_AC·SynOps); ``vs_other`` = the
    other route's cheapest model at or above the threshold divided by the winner's SynOps; ``vs_ann`` = the ANN's
    MACs / the winner's SynOps.
    """
    rows = list(rows)
    failed = [r for r in rows if r.get("status", "ok") != "ok"]
    groups = _snn_groups(rows)
    ann = [g for g in group_rows(rows) if g["route"] == "ann"]
    out: dict[str, Any] = {"models": len(rows), "failed": len(failed), "candidates": len(groups),
                           "excluded": len([r for r in rows if r.get("status", "ok") == "ok"
                                            and r.get("route") != "ann"]) - sum(g["n"] for g in groups),
                           "routes": sorted({str(g["route"]) for g in groups}), "thresholds": [],
                           "ann_accuracy": ann[0]["accuracy"] if ann else math.nan,
                           "ann_macs": ann[0]["macs"] if ann else math.nan}
    if not groups:
        out["status"] = "no rows" if not rows else ("all failed" if len(failed) == len(rows) else "no valid")
        return out
    out["status"] = "ok"
    best = max(g["accuracy"] for g in groups)
    out["best_accuracy"] = best
    for margin in margins:
        threshold = best - margin
        above = [g for g in groups if g["accuracy"] >= threshold - 1e-12]
        win = min(above, key=lambda g: (g["synops"], -g["accuracy"]))
        other_route = next((r for r in out["routes"] if r != win["route"]), None)
        other = [g for g in above if g["route"] == other_route]
        other_win = min(other, key=lambda g: g["synops"]) if other else None
        other_all = [g for g in groups if g["route"] == other_route]
        macs = win["macs"] if finite(win["macs"]) else out["ann_macs"]
        out["thresholds"].append({
            "margin": margin, "threshold": threshold, "winner": win, "other_route": other_route,
            "other": other_win, "vs_other": other_win["synops"] / win["synops"] if other_win and win["synops"] > 0
            else math.nan,
            "other_best": max(other_all, key=lambda g: g["accuracy"]) if other_all else None,
            "macs": macs, "vs_ann": macs / win["synops"] if finite(macs) and win["synops"] > 0 else math.nan})
    return out


def _times(ratio: float, what: str) -> str:
    """'3.2× fewer than X' / '1.5× more than X' for ratio = other / this."""
    if not math.isfinite(ratio) or ratio <= 0:
        return f"not comparable with {what}"
    if abs(ratio - 1) < 0.005:
        return f"as many as {what}"
    if ratio > 1:
        return f"{ratio:.3g}× fewer than {what}"
    return f"{1 / ratio:.3g}× more than {what}"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%" if math.isfinite(x) else "n/a"


def _also(sentence: str, margins: list[str]) -> str:
    """A verdict sentence with its '(also ... within M point(s))' clause set to ``margins``."""
    base = sentence.split(" (also the lowest-energy model within ")[0].rstrip(".")
    return f"{base} (also the lowest-energy model within {' and '.join(margins)} point(s) of the best)."


def verdict(rows: list[dict], margins: Sequence[float] = MARGINS) -> list[str]:
    """Plain-language sentences: for each accuracy threshold, the lowest-energy model and how it compares with
    the other route's best model there and with the ANN's MACs."""
    d = verdict_data(rows, margins)
    if d["status"] == "no rows":
        return ["The sweep holds no results yet: no verdict."]
    if d["status"] == "all failed":
        return [f"All {d['models']} runs failed: no verdict (see the failed runs below)."]
    if d["status"] == "no valid":
        if d["models"] and not d["failed"] and not d["excluded"]:  # an ANN run folder: nothing spiking to compare
            return [f"Only the ANN is here ({_pct(d['ann_accuracy'])} with {d['ann_macs']:,.0f} MACs per "
                    "inference), no SNN: no verdict."]
        return [f"No model has both a finite accuracy and SynOps ({d['failed']} of {d['models']} failed): "
                "no verdict."]
    lines = []
    if len(d["routes"]) == 1:
        lines.append(f"Only the {d['routes'][0]} route has results: no comparison between routes.")
    if d["failed"] or d["excluded"]:
        lines.append(f"Left out: {d['failed']} failed model(s) and {d['excluded']} without a finite accuracy or "
                     "SynOps count.")
    previous, also = None, []  # a model that also wins the looser thresholds gets one sentence, not repeats
    for t in d["thresholds"]:
        w = t["winner"]
        if previous is not None and w is previous["winner"] and t["other"] is previous["other"]:
            also.append(f"{100 * t['margin']:g}")
            lines[-1] = _also(lines[-1], also)
            continue
        previous, also = t, []
        where = "the best accuracy" if t["margin"] == 0 else f"within {100 * t['margin']:g} point(s) of the best, " \
                                                             f"{_pct(d['best_accuracy'])}"
        s = (f"At ≥ {_pct(t['threshold'])} accuracy ({where}) the lowest-energy model is {w['label']} "
             f"({params(w)}; {w['route']} route, accuracy {_pct(w['accuracy'])}) with {w['synops']:,.0f} SynOps per "
             f"inference")
        if finite(w.get("energy_rel")):
            s += f" ({w['energy_rel']:.3g}× the reference energy)"
        if t["other"] is not None:
            o = t["other"]
            s += "; " + _times(t["vs_other"], f"the best {o['route']} model there, {o['label']} ({params(o)}, "
                                              f"{o['synops']:,.0f} SynOps)")
        elif t["other_best"] is not None:
            o = t["other_best"]
            s += (f"; the {o['route']} route does not reach this accuracy (its most accurate model: {o['label']}, "
                  f"{_pct(o['accuracy'])})")
        if math.isfinite(t["vs_ann"]):
            s += "; " + _times(t["vs_ann"], f"the ANN's {t['macs']:,.0f} MACs")
        lines.append(s + ".")
    if math.isfinite(d["ann_accuracy"]):
        lines.append(f"The ANN reaches {_pct(d['ann_accuracy'])} with {d['ann_macs']:,.0f} MACs per inference.")
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# Tables: (headers, rows of strings), rendered as HTML and Markdown alike
# ---------------------------------------------------------------------------------------------------------------------

Table = tuple[list[str], list[list[str]]]


def _pm(g: dict, key: str, scale: float = 100.0, fmt: str = ".2f") -> str:
    if not finite(g.get(key)):
        return ""
    s = format(scale * g[key], fmt)
    return s + (f" ± {format(scale * g[key + '_sem'], fmt)}" if g.get("n", 1) > 1 else "")


def results_table(rows: list[dict]) -> Table:
    """One line per model, seeds averaged (mean ± standard error)."""
    head = ["route", "label", "parameters", "accuracy [%]", "SynOps", "E/E_ref", "SynOps/MAC", "dead [%]",
            "R [%]", "near-zero w [%]"]
    body = [[str(g["route"]), str(g["label"]), params(g), _pm(g, "accuracy"), _pm(g, "synops", 1.0, ",.0f"),
             _pm(g, "energy_rel", 1.0, ".3g"), _pm(g, "synops_per_mac", 1.0, ".3g"), _pm(g, "dead_rate"),
             _pm(g, "R"), _pm(g, "near_zero_weights")] for g in group_rows(rows)]
    return head, body


def best_table(rows: list[dict], margin: float = 0.01) -> Table:
    """Per label: its most accurate model and its lowest-energy model within ``margin`` of that accuracy."""
    head = ["label", "route", "most accurate", "accuracy [%]", "SynOps", "E/E_ref",
            f"cheapest within {100 * margin:g} pt", "accuracy [%]", "SynOps", "E/E_ref"]
    by_label: dict[str, list[dict]] = {}
    for g in group_rows(rows):
        by_label.setdefault(str(g["label"]), []).append(g)
    body = []
    for label, gs in by_label.items():
        top = max(gs, key=lambda g: g["accuracy"])
        near = [g for g in gs if g["accuracy"] >= top["accuracy"] - margin - 1e-12 and finite(g["synops"])]
        cheap = min(near, key=lambda g: g["synops"]) if near else None
        cells = [label, str(top["route"])]
        for g in (top, cheap):
            cells += [params(g), _pm(g, "accuracy"), _pm(g, "synops", 1.0, ",.0f"), _pm(g, "energy_rel", 1.0, ".3g")] \
                if g else ["", "", "", ""]
        body.append(cells)
    return head, body


def failed_table(rows: list[dict]) -> Table:
    return ["run", "route", "error"], [[str(r.get("run")), str(r.get("route")), str(r.get("error") or "")]
                                       for r in rows if r.get("status", "ok") != "ok"]


def score_block(rows: list[dict], study: dict) -> tuple:
    """The score table of :mod:`synopt.compare.scores` (AUC / Spearman / MI per label at the cutoffs ``P_list`` of
    the study, default 70 and 50 %) as a table block, or a text block saying why there is none."""
    try:
        from synopt.compare import scores
    except ImportError as exc:
        return ("pre", f"(no score table: synopt.compare.scores cannot be imported: {exc})")
    cutoffs = list(study.get("cutoffs") or study.get("P_list") or DEFAULT_CUTOFFS)
    snn = [r for r in ok_rows(rows) if r.get("route") in ("direct", "conversion")]
    try:
        text = scores.format_score_table(scores.score_table(snn, P_list=cutoffs), cutoffs)
    except Exception as exc:  # noqa: BLE001 - the report still shows everything else
        return ("pre", f"(no score table: {type(exc).__name__}: {exc})")
    table = _parse_markdown_table(text)
    return ("table", table) if table else ("pre", text)


def _parse_markdown_table(text: str) -> Table | None:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or not all(ln.startswith("|") and ln.endswith("|") for ln in lines):
        return None
    cells = [[c.strip() for c in ln[1:-1].split("|")] for ln in lines]
    head, body = cells[0], cells[2:]
    return (head, body) if all(len(r) == len(head) for r in body) else None


# ---------------------------------------------------------------------------------------------------------------------
# Plots of a source
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Plot:
    name: str
    title: str
    caption: str
    paths: list[Path]  # [png, svg]


def _pick(source: Source, route: str, margin: float = 0.01) -> dict | None:
    """The row of ``route`` (not a plain baseline) with the fewest SynOps within ``margin`` of the route's best
    accuracy, whose run folder has a metrics.json."""
    cands = [r for r in ok_rows(source.rows) if r.get("route") == route and r.get("method") != "baseline"
             and finite(r.get("synops")) and source.metrics(r) is not None]
    if not cands:
        return None
    best = max(num(r["accuracy"]) for r in cands)
    return min((r for r in cands if num(r["accuracy"]) >= best - margin - 1e-12), key=lambda r: num(r["synops"]))


def _point_metrics(metrics: dict, row: dict) -> dict | None:
    if row.get("method") == "baseline":
        return metrics.get("baseline")
    points = metrics.get("points") or []
    i = int(num(row.get("point"))) if finite(row.get("point")) else 0
    return points[i] if 0 <= i < len(points) else None


def _describe(row: dict) -> str:
    bits = [str(row.get("label"))]
    if finite(row.get("intensity")):
        bits.append(f"{row.get('intensity_name') or 'intensity'}={num(row['intensity']):g}")
    bits.append(f"seed {row.get('seed')}")
    return " ".join(bits)


def make_plots(source: Source, folder: Path) -> tuple[list[Plot], list[str]]:
    """Draw every plot that the source has data for into ``folder``; returns the plots and notes on those left
    out."""
    rows, notes, out = source.rows, [], []
    ref = source.reference or {}
    ref_name = f"{ref.get('run')} ({ref.get('kind')})" if ref else None

    def add(name: str, title: str, caption: str, draw: Callable[[Path], list[Path]]) -> None:
        paths = draw(folder / name)
        if paths:
            out.append(Plot(name, title, caption, paths))
        else:
            notes.append(f"{title}: no data in these results.")

    add("tradeoff", "Energy–accuracy trade-off",
        "x: E_SNN of each model / E_SNN of the reference"
        + (f" {ref_name}" if ref_name else "") + "; y: test accuracy; one line per label through the seed means "
        "(error bars: standard error), single seeds faint. Mirrors Fig. 2 of 000_* (upper left is better).",
        lambda stem: plots.plot_tradeoff(rows, stem, ref.get("run") if ref else None))
    add("accuracy_vs_synops", "Accuracy vs SynOps",
        "SynOps per inference measured on the simulator (log x); the red dotted line marks the ANN's MACs "
        "(same architecture). Mirrors Fig. 3 of 003_*.", lambda stem: plots.plot_accuracy_vs_synops(rows, stem))
    add("dead_rate", "Dead neurons",
        "Left: fraction of neurons that never fire on the test samples vs the penalty intensity λ'; right: accuracy "
        "vs dead rate. Mirrors Fig. 3C of 000_*.", lambda stem: plots.plot_dead_rate(rows, stem))
    add("near_zero_weights", "Near-zero weights",
        "Fraction of conv/linear weights with |w| < 1e-3·max|w| of their layer, and accuracy, vs SynOps. Mirrors "
        "Fig. 6 (left) of 003_*.", lambda stem: plots.plot_near_zero_weights(rows, stem))

    conv, direct = _pick(source, "conversion"), _pick(source, "direct")
    series: dict[str, dict[str, float]] = {}
    if conv is not None:
        m = source.metrics(conv)
        base, point = m.get("baseline") or {}, _point_metrics(m, conv) or {}
        if base.get("synops_per_layer"):
            series[f"conversion baseline θ=1 (T={conv.get('timesteps')})"] = base["synops_per_layer"]
        if point.get("synops_per_layer"):
            series[_describe(conv)] = point["synops_per_layer"]
    if direct is not None:
        per_layer = (source.metrics(direct) or {}).get("synops_per_layer")
        if per_layer and (not series or set(per_layer) & set(next(iter(series.values())))):
            series[_describe(direct)] = per_layer
    add("synops_per_layer", "SynOps per layer",
        "Per layer, the conversion baseline (plain ANN weights, threshold 1) vs the selected optimised models (per "
        "route the fewest SynOps within 1 point of the route's best accuracy). Mirrors Fig. 2 (right) of 003_*.",
        lambda stem: plots.plot_synops_per_layer(series, stem))

    curves, seen_baselines = [], set()
    for r in ok_rows(rows):
        if r.get("route") != "conversion" or source.metrics(r) is None:
            continue
        m = source.metrics(r)
        pm = _point_metrics(m, r)
        if pm and pm.get("accuracy_per_step"):
            curves.append((str(r.get("label")), pm["accuracy_per_step"]))
        if r.get("method") == "baseline":
            seen_baselines.add(str(source.run_path(r)))
    for r in ok_rows(rows):  # baselines of runs whose rows do not list them
        key = str(source.run_path(r))
        if r.get("route") == "conversion" and key not in seen_baselines and source.metrics(r):
            seen_baselines.add(key)
            acc = (source.metrics(r).get("baseline") or {}).get("accuracy_per_step")
            if acc:
                curves.append(("conversion baseline θ=1", acc))
    add("accuracy_per_step", "Accuracy vs time step",
        "Accuracy of each converted model after t simulation steps (one line per model, colour by label). Mirrors "
        "Fig. 4 of 003_*.", lambda stem: plots.plot_accuracy_per_step(curves, stem))

    if direct is not None and (source.metrics(direct) or {}).get("accounting"):
        add("layer_shares", "Layer-wise penalty vs energy share",
            f"Model: {_describe(direct)}. Each spiking layer's share of E_SNN (grey, the ground truth) and of the "
            "penalties Ω_syn, Ω_total, Ω_balance; left with every neuron firing (as in Fig. 1 of 000_*), right with "
            "the model's measured firing rates. Ω_syn coincides with E_SNN by construction (Theorem 3.4).",
            lambda stem: plots.plot_layer_shares(source.metrics(direct), stem, _describe(direct)))
    else:
        notes.append("Layer-wise penalty vs energy share: no direct run with an accounting in its metrics.json.")
    missing = sorted({str(source.run_path(r)) for r in ok_rows(rows) if r.get("route") != "ann"
                      and source.metrics(r) is None})
    if missing:
        notes.append(f"{len(missing)} run folder(s) without a readable metrics.json (per-run plots skip them): "
                     + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
    return out, notes


# ---------------------------------------------------------------------------------------------------------------------
# Document: a list of blocks rendered as HTML or Markdown
# ---------------------------------------------------------------------------------------------------------------------


def _blocks(source: Source, plot_list: list[Plot], notes: list[str]) -> list[tuple]:
    rows = source.rows
    ref = source.reference
    title = (f"synopt report: {source.study.get('name') or source.path.name}" if source.kind == "sweep"
             else f"synopt report: run {source.path.name}")
    n_ok = len(ok_rows(rows))
    blocks: list[tuple] = [
        ("h1", title),
        ("p", f"Source: {source.path} ({source.kind} folder; models: {len(rows)}, measured: {n_ok}, "
              f"failed or without accuracy: {len(rows) - n_ok})."),
        ("h2", "Verdict"), ("list", verdict(rows), "verdict"),
        ("h2", "Configuration"),
    ]
    blocks.append(("p", reference_text(ref)))
    blocks.append(("pre", json.dumps(source.study, indent=2, sort_keys=True, default=str)))
    blocks += [("h2", "Best point per method"), ("table", best_table(rows)),
               ("h2", "Curve scores"),
               ("p", "AUC, Spearman and mutual information of each label's energy–accuracy curve at the accuracy "
                     "cutoffs (Table 4 of 000_*); higher is better."),
               score_block(rows, source.study),
               ("h2", "Results (seeds averaged: mean ± standard error)"), ("table", results_table(rows))]
    fail = failed_table(rows)
    if fail[1]:
        blocks += [("h2", "Failed runs"), ("table", fail)]
    blocks.append(("h2", "Plots"))
    for p in plot_list:
        blocks += [("h3", p.title), ("plot", p), ("p", p.caption)]
    if notes:
        blocks += [("h3", "Plots left out"), ("list", notes, "notes")]
    return blocks


REFERENCE_KINDS = {"direct-unpenalised": "the unpenalised direct SNN (λ' = 0, the baseline of 000_*)",
                   "conversion-baseline": "the conversion baseline (plain ANN weights, threshold 1)"}


def reference_text(ref: dict | None) -> str:
    if not ref:
        return "Energy reference: none (E/E_ref is left empty where the rows do not give it)."
    kind = REFERENCE_KINDS.get(str(ref.get("kind")), str(ref.get("kind")))
    per_seed = ref.get("per_seed") or {}
    if len(per_seed) > 1:
        each = "; ".join(f"seed {seed}: run {r.get('run')}, {num(r.get('e_snn_j')):.4g} J"
                         for seed, r in per_seed.items())
        return f"Energy reference: {kind}, one per seed, each model relative to its own seed's ({each})."
    return f"Energy reference: {kind}, run {ref.get('run')}, E_SNN = {num(ref.get('e_snn_j')):.4g} J per inference."


CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 6px}
th{background:#f0f0f0}td{text-align:right}td:nth-child(-n+3){text-align:left}
pre{background:#f7f7f7;padding:.5em;font-size:12px;overflow-x:auto}img.plot{max-width:100%;display:block}
ul.verdict li{margin:.4em 0}figure{margin:1em 0}"""

SCRIPT = """window.addEventListener('load', function () {
  var ok = 0;
  document.querySelectorAll('img.plot').forEach(function (im) { if (im.complete && im.naturalWidth > 0) ok++; });
  document.body.dataset.imagesOk = String(ok);
});"""


def render_html(blocks: list[tuple]) -> str:
    e = html.escape
    n_plots = sum(1 for b in blocks if b[0] == "plot")
    title = next((b[1] for b in blocks if b[0] == "h1"), "synopt report")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             f"<style>{CSS}</style>", f"<script>{SCRIPT}</script>", "</head>",
             f'<body data-images-total="{n_plots}" data-images-ok="pending">']
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "pre":
            parts.append(f"<pre>{e(b[1])}</pre>")
        elif kind == "list":
            parts.append(f'<ul class="{e(b[2])}">' + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            head, body = b[1]
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body)
                         + "</table>")
        elif kind == "plot":
            p: Plot = b[1]
            data = base64.b64encode(p.paths[0].read_bytes()).decode("ascii")
            parts.append(f'<figure id="plot-{e(p.name)}"><img class="plot" alt="{e(p.title)}" '
                         f'src="data:image/png;base64,{data}"></figure>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple], plot_dir: str) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "pre":
            out += ["```", b[1], "```", ""]
        elif kind == "list":
            out += [f"- {x}" for x in b[1]] + [""]
        elif kind == "table":
            head, body = b[1]
            out += ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in body] + [""]
        elif kind == "plot":
            p: Plot = b[1]
            out += [f"![{p.title}]({plot_dir}/{p.name}.png) ([SVG]({plot_dir}/{p.name}.svg))", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


def _atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file in its folder and rename it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the report from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(src: Path, html_out: Path, md_out: Path | None = None) -> Path:
    """Write the report of the sweep or run folder ``src`` as one self-contained HTML file ``html_out`` (and, with
    ``md_out``, a Markdown file whose plots are PNG/SVG files in ``<md_out stem>_plots/`` beside it).

    Everything is read and drawn before anything is written, and every file is written through a temporary file
    and renamed, so a failure leaves no half-written report.  Returns ``html_out``.
    """
    source = load_source(src)
    html_out = Path(html_out)
    with tempfile.TemporaryDirectory(prefix="synopt-report-") as tmp:
        plot_list, notes = make_plots(source, Path(tmp))
        blocks = _blocks(source, plot_list, notes)
        page = render_html(blocks)
        md_text = None
        if md_out is not None:
            md_out = Path(md_out)
            plot_dir = f"{md_out.stem}_plots"
            md_text = render_markdown(blocks, plot_dir)
            for p in plot_list:
                for path in p.paths:
                    _atomic_bytes(md_out.parent / plot_dir / path.name, path.read_bytes())
            _atomic_bytes(md_out, md_text.encode("utf-8"))
        _atomic_bytes(html_out, page.encode("utf-8"))
    return html_out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m synopt.compare.report",
                                 description="Write the HTML (and Markdown) report of a sweep or run folder.")
    ap.add_argument("src", type=Path, help="sweep folder (results.json) or run folder (metrics.json)")
    ap.add_argument("--html", type=Path, default=None, help="output HTML file (default SRC/report.html)")
    ap.add_argument("--md", type=Path, default=None, help="also write this Markdown file (plots beside it)")
    args = ap.parse_args(argv)
    try:
        out = write_report(args.src, args.html or args.src / "report.html", args.md)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
