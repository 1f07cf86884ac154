"""Plots comparing the two routes (conversion, direct) on energy and accuracy; every figure as PNG and SVG.

Row plots take the result rows of a sweep (one dict per trained model, see :mod:`synopt.compare.report`):

* :func:`plot_tradeoff` — energy–accuracy trade-off curves, one line per label (Fig. 2 of 000_*).
* :func:`plot_accuracy_vs_synops` — accuracy vs SynOps (log x), the ANN's MACs marked (Fig. 3 of 003_*).
* :func:`plot_dead_rate` — dead-neuron rate vs λ' and accuracy vs dead rate (Fig. 3C of 000_*).
* :func:`plot_near_zero_weights` — fraction of near-zero weights and accuracy vs SynOps (Fig. 6 left of 003_*).

Run plots take numbers read from run folders' ``metrics.json``:

* :func:`plot_synops_per_layer` — SynOps per layer of several models (Fig. 2 right of 003_*).
* :func:`plot_accuracy_per_step` — accuracy vs simulation time step of converted nets (Fig. 4 of 003_*).
* :func:`plot_layer_shares` — each layer's share of E_SNN vs its share of Ω_syn/Ω_total/Ω_balance (Fig. 1 of 000_*).

Each function writes ``stem.png`` and ``stem.svg`` and returns both paths, or ``[]`` when the rows hold nothing to
plot (e.g. no dead rates in a conversion-only sweep).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NUMERIC = ("accuracy", "synops", "e_snn_j", "energy_rel", "e_ann_j", "macs", "synops_per_mac", "dead_rate", "R",
           "near_zero_weights", "wall_time_s")
ROUTE_ORDER = {"direct": 0, "conversion": 1, "ann": 2}
MARKERS = {"direct": "o", "conversion": "s", "ann": "*"}
INTENSITY_NAMES = {"lambda_norm": "λ' (normalised penalty intensity)", "target_synops": "SynOp target",
                   "rho": "ρ (first-layer scale)"}


# ---------------------------------------------------------------------------------------------------------------------
# Rows: numbers, grouping over seeds
# ---------------------------------------------------------------------------------------------------------------------


def num(value) -> float:
    """``value`` as a float; NaN for None, NaN, non-numbers and booleans."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def finite(value) -> bool:
    return math.isfinite(num(value))


def ok_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows of models that trained and were measured (``status`` "ok", a finite accuracy)."""
    return [r for r in rows if r.get("status", "ok") == "ok" and finite(r.get("accuracy"))]


def _key_value(value):
    """A hashable grouping value: NaN and None compare equal."""
    v = num(value) if isinstance(value, (int, float)) or value is None else value
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _stats(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var / len(vals))


def group_rows(rows: Iterable[dict]) -> list[dict]:
    """Successful rows grouped over seeds: one dict per (route, method, label, intensity, T, penalty, p, surrogate).

    Each group has those keys, ``n`` (models), ``seeds``, ``runs``, ``rows`` and, for every numeric column
    ``k``, ``k`` (mean of the finite values, NaN if none) and ``k_sem`` (standard error; 0 for one model).
    Sorted by route (direct, conversion, ann), label and intensity.
    """
    keys = ("route", "method", "label", "intensity", "timesteps", "penalty", "p", "surrogate")
    groups: dict[tuple, list[dict]] = {}
    for r in ok_rows(rows):
        groups.setdefault(tuple(_key_value(r.get(k)) for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        g = dict(zip(keys, key))
        g["intensity_name"] = members[0].get("intensity_name")
        g.update(n=len(members), rows=members, seeds=sorted({m.get("seed") for m in members}, key=str),
                 runs=[m.get("run") for m in members])
        for k in NUMERIC:
            g[k], g[f"{k}_sem"] = _stats([num(m.get(k)) for m in members])
        out.append(g)
    out.sort(key=lambda g: (ROUTE_ORDER.get(str(g["route"]), 9), str(g["label"]),
                            num(g["intensity"]) if finite(g["intensity"]) else -math.inf))
    return out


def _labels(rows: Iterable[dict]) -> list[str]:
    seen: dict[str, int] = {}
    for r in rows:
        seen.setdefault(str(r.get("label")), ROUTE_ORDER.get(str(r.get("route")), 9))
    return sorted(seen, key=lambda lab: (seen[lab], lab))


def colours(labels: Iterable[str]) -> dict[str, tuple]:
    """One colour per label, stable for a given label list (tab10, then tab20 past ten labels)."""
    labels = list(labels)
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


# ---------------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------------


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` (120 dpi) and ``stem.svg``; close the figure; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    try:  # no dates, fixed SVG ids: the same data give the same files (reports are committed to docs/)
        fig.savefig(paths[0], dpi=120, metadata={"Software": None})
        with plt.rc_context({"svg.hashsalt": "synopt"}):
            fig.savefig(paths[1], metadata={"Date": None})
    finally:
        plt.close(fig)
    return paths


def _legend(ax, **kw) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, **kw)


def _curves(ax, rows: list[dict], x_key: str, y_key: str, x_scale: float = 1.0, y_scale: float = 100.0,
            seeds: bool = True, legend: bool = True) -> int:
    """One line per label through the seed means of (x_key, y_key) with standard-error bars, sorted by x; the
    single seeds as faint markers.  Returns the number of groups drawn."""
    groups = [g for g in group_rows(rows) if finite(g[x_key]) and finite(g[y_key])]
    pal = colours(_labels(rows))
    drawn = 0
    for label in _labels(g for g in groups):
        gs = sorted((g for g in groups if str(g["label"]) == label), key=lambda g: g[x_key])
        route = str(gs[0]["route"])
        c = pal[label]
        ax.errorbar([x_scale * g[x_key] for g in gs], [y_scale * g[y_key] for g in gs],
                    xerr=[x_scale * g.get(f"{x_key}_sem", 0.0) for g in gs],
                    yerr=[y_scale * g.get(f"{y_key}_sem", 0.0) for g in gs],
                    marker=MARKERS.get(route, "^"), ms=5 if route != "ann" else 11, lw=1.2, capsize=2, color=c,
                    label=label if legend else None, ls="-" if len(gs) > 1 else "none")
        if seeds and any(g["n"] > 1 for g in gs):
            pts = [r for g in gs for r in g["rows"] if finite(r.get(x_key)) and finite(r.get(y_key))]
            ax.scatter([x_scale * num(r[x_key]) for r in pts], [y_scale * num(r[y_key]) for r in pts], s=10,
                       color=c, alpha=0.3, lw=0)
        drawn += len(gs)
    return drawn


def _log_if_wide(ax, values: list[float], axis: str = "x", ratio: float = 20.0) -> None:
    vals = [v for v in values if math.isfinite(v) and v > 0]
    if vals and max(vals) / min(vals) > ratio:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def plot_tradeoff(rows: list[dict], stem: str | Path, reference: str | None = None) -> list[Path]:
    """Energy–accuracy trade-off (Fig. 2 of 000_*): x = E_SNN relative to the reference model, y = accuracy [%];
    one line per label through the seed means (± standard error), the single seeds as faint markers.  The x axis
    turns logarithmic when the energies span more than a factor 20 (converted nets often cost many baselines)."""
    rows = [r for r in ok_rows(rows) if finite(r.get("energy_rel"))]
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _curves(ax, rows, "energy_rel", "accuracy")
    ax.axvline(1.0, color="grey", ls=":", lw=0.8, label=f"reference{': ' + reference if reference else ''}")
    _log_if_wide(ax, [num(r["energy_rel"]) for r in rows])
    ax.set_xlabel("energy consumption rate E_SNN / E_reference")
    ax.set_ylabel("accuracy [%]")
    ax.set_title("energy–accuracy trade-off (upper left is better)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, loc="best")
    return save_figure(fig, stem)


def plot_accuracy_vs_synops(rows: list[dict], stem: str | Path) -> list[Path]:
    """Accuracy vs SynOps per inference, log x (Fig. 3 of 003_*); ANN rows as a star at their MACs and the ANN's
    MACs (the rows' ``macs``, the same architecture) as a dotted vertical line."""
    rows = ok_rows(rows)
    snn = [r for r in rows if r.get("route") != "ann" and finite(r.get("synops")) and num(r["synops"]) > 0]
    ann = [dict(r, synops=r.get("macs")) for r in rows if r.get("route") == "ann" and finite(r.get("macs"))]
    if not snn and not ann:
        return []
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _curves(ax, snn + ann, "synops", "accuracy", seeds=True)
    macs = sorted(num(r.get("macs")) for r in rows if finite(r.get("macs")))
    if macs:
        ax.axvline(macs[len(macs) // 2], color="red", ls=":", lw=1, label=f"ANN MACs ({macs[len(macs) // 2]:,.0f})")
    ax.set_xscale("log")
    ax.set_xlabel("SynOps per inference (ANN: MACs)")
    ax.set_ylabel("accuracy [%]")
    ax.set_title("accuracy vs operations", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, loc="best")
    return save_figure(fig, stem)


def plot_dead_rate(rows: list[dict], stem: str | Path) -> list[Path]:
    """Dead neurons (Def. 3.1 of 000_*): left the dead rate [%] vs the intensity (λ', symlog), right accuracy vs
    dead rate (Fig. 3C of 000_*), one line per label; rows without a dead rate are left out."""
    rows = [r for r in ok_rows(rows) if finite(r.get("dead_rate"))]
    if not rows:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    with_x = [r for r in rows if finite(r.get("intensity"))]
    if with_x:
        _curves(left, with_x, "intensity", "dead_rate", seeds=True, legend=False)
        values = sorted({num(r["intensity"]) for r in with_x})
        positive = [v for v in values if v > 0]
        if positive:
            left.set_xscale("symlog", linthresh=min(positive))
        if len(values) <= 12:
            left.set_xticks(values, [f"{v:g}" for v in values])
            left.minorticks_off()
    names = sorted({INTENSITY_NAMES.get(str(r.get("intensity_name")), str(r.get("intensity_name") or "intensity"))
                    for r in with_x})
    left.set_xlabel(" / ".join(names) if names else "intensity")
    left.set_ylabel("dead neurons [%]")
    left.grid(alpha=0.3, which="both")
    _curves(right, rows, "dead_rate", "accuracy", x_scale=100.0)
    right.set_xlabel("dead neurons [%]")
    right.set_ylabel("accuracy [%]")
    right.grid(alpha=0.3)
    _legend(right, loc="best")
    fig.suptitle("dead neurons", fontsize=9)
    return save_figure(fig, stem)


def plot_near_zero_weights(rows: list[dict], stem: str | Path) -> list[Path]:
    """Fraction of near-zero weights (|w| < 1e-3·max|w| per layer) [%] and accuracy [%] vs SynOps, log x
    (Fig. 6 left of 003_*), one line per label."""
    rows = [r for r in ok_rows(rows) if finite(r.get("near_zero_weights")) and finite(r.get("synops"))
            and num(r["synops"]) > 0]
    if not rows:
        return []
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True)
    _curves(top, rows, "synops", "near_zero_weights")
    _curves(bottom, rows, "synops", "accuracy", legend=False)
    top.set_ylabel("near-zero weights [%]")
    bottom.set_ylabel("accuracy [%]")
    bottom.set_xscale("log")
    bottom.set_xlabel("SynOps per inference")
    for ax in (top, bottom):
        ax.grid(alpha=0.3, which="both")
    _legend(top)
    top.set_title("weight sparsity vs SynOps", fontsize=9)
    return save_figure(fig, stem)


def plot_synops_per_layer(series: dict[str, dict[str, float]], stem: str | Path) -> list[Path]:
    """SynOps per layer (log y) of each model in ``series`` = {model name: {layer: SynOps}} side by side
    (Fig. 2 right of 003_*: the baseline SNN vs an optimised model).  Layers missing in a model count 0."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return []
    layers: list[str] = []
    for per_layer in series.values():
        layers += [name for name in per_layer if name not in layers]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(layers) * len(series) + 2.5), 3.8))
    for i, (name, per_layer) in enumerate(series.items()):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(layers))]
        ys = [max(num(per_layer.get(layer, 0.0)), 0.0) for layer in layers]
        total = sum(y for y in ys if math.isfinite(y))
        ax.bar(xs, ys, width, label=f"{name} ({total:,.0f})")
    ax.set_xticks(range(len(layers)), layers, rotation=45 if len(layers) > 6 else 0, fontsize=7)
    ax.set_xlabel("layer (spiking layer whose spikes cause the SynOps)")
    ax.set_ylabel("SynOps per inference")
    ax.set_yscale("log")
    ax.set_title("SynOps per layer (legend: total)", fontsize=9)
    _legend(ax)
    return save_figure(fig, stem)


def plot_accuracy_per_step(curves: list[tuple[str, list[float]]], stem: str | Path) -> list[Path]:
    """Accuracy [%] vs simulation time step t = 1..T (Fig. 4 of 003_*): one line per converted model in
    ``curves`` = [(label, accuracy per step), ...]; lines of the same label share a colour and a legend entry."""
    curves = [(str(lab), list(acc)) for lab, acc in curves if acc]
    if not curves:
        return []
    pal = colours(dict.fromkeys(lab for lab, _ in curves))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    shown: set[str] = set()
    for lab, acc in curves:
        ax.plot(range(1, len(acc) + 1), [100 * num(a) for a in acc], marker=".", ms=4, lw=1, alpha=0.8,
                color=pal[lab], label=None if lab in shown else lab)
        shown.add(lab)
    ax.set_xlabel("time step t")
    ax.set_ylabel("accuracy after t steps [%]")
    ax.set_title("accuracy vs inference time of converted nets", fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax, loc="best")
    return save_figure(fig, stem)


SHARE_SERIES = ("E_SNN", "Ω_syn", "Ω_total", "Ω_balance")


def layer_shares(metrics: dict) -> dict[str, dict[str, list[float]]]:
    """Each spiking layer's share of E_SNN and of the penalties Ω_syn, Ω_total, Ω_balance (Eqs. 11, 14, 19, 20 of
    000_*) for a direct run's ``metrics.json``.

    Returns ``{"layers": [names], "all firing": {series: shares}, "measured": {series: shares}}``:

    * "all firing" (Fig. 1 of 000_*, s = 1): E_SNN(l) ∝ Ω_syn(l) = Σ_i ψ_l,i (the accounting's ``synapses``),
      Ω_total(l) = d_l (neurons), Ω_balance(l) = 1;
    * "measured" (this run's spikes): E_SNN(l) = ``e_snn_per_layer_j``, Ω_syn(l) = the measured SynOps of layer l
      (exact ψ_l,i per neuron), Ω_total(l) = d_l·R(l), Ω_balance(l) = R(l) with R(l) = ``firing_rate``.

    Spikes are 0 or 1, so s^p = s and the shares are the same for p = 1 and p = 2.
    """
    acc = metrics.get("accounting") or {}
    layers = [lay for lay in acc.get("layers", []) if "name" in lay]
    if not layers:
        raise ValueError("metrics hold no accounting.layers (not a direct run?)")
    names = [str(lay["name"]) for lay in layers]
    rates = metrics.get("firing_rate") or {}
    e_layer = metrics.get("e_snn_per_layer_j") or {}
    synops = metrics.get("synops_per_layer") or {}

    def share(values: list[float]) -> list[float]:
        total = sum(v for v in values if math.isfinite(v))
        return [v / total if total > 0 and math.isfinite(v) else math.nan for v in values]

    all_firing = {"E_SNN": share([num(lay.get("synapses")) for lay in layers]),
                  "Ω_syn": share([num(lay.get("synapses")) for lay in layers]),
                  "Ω_total": share([num(lay.get("neurons")) for lay in layers]),
                  "Ω_balance": share([1.0 for _ in layers])}
    rate = [num(rates.get(n)) for n in names]
    measured = {"E_SNN": share([num(e_layer.get(n)) for n in names]),
                "Ω_syn": share([num(synops.get(n, lay.get("synops"))) for n, lay in zip(names, layers)]),
                "Ω_total": share([num(lay.get("neurons")) * r for lay, r in zip(layers, rate)]),
                "Ω_balance": share(rate)}
    return {"layers": names, "all firing": all_firing, "measured": measured}


def plot_layer_shares(metrics: dict, stem: str | Path, title: str = "") -> list[Path]:
    """Layer-wise share of E_SNN (grey) vs the share of each penalty Ω_* (Fig. 1 of 000_*) for a direct run:
    left with every neuron firing (s = 1, as in the paper), right with the run's measured firing rates."""
    shares = layer_shares(metrics)
    names = shares["layers"]
    colour = {"E_SNN": "grey", "Ω_syn": "tab:blue", "Ω_total": "tab:orange", "Ω_balance": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(names) + 4), 3.8), sharey=True)
    width = 0.8 / len(SHARE_SERIES)
    for ax, which in zip(axes, ("all firing", "measured")):
        for i, key in enumerate(SHARE_SERIES):
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(names))]
            ax.bar(xs, shares[which][key], width, color=colour[key],
                   label=f"{key}(l)/{key}" if key != "E_SNN" else "E_SNN(l)/E_SNN (ground truth)")
        ax.set_xticks(range(len(names)), [f"{j + 1}" for j in range(len(names))])
        ax.set_xlabel("spiking layer l (" + ", ".join(names[:4]) + (" …" if len(names) > 4 else "") + ")")
        ax.set_title("all neurons firing (s = 1)" if which == "all firing" else "measured firing rates",
                     fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("share of the total")
    _legend(axes[1])
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, stem)
