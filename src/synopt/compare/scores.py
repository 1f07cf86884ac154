"""Scores of an energy–accuracy trade-off curve: AUC(P), Spearman(P), MI(P) (Sec. 4.3, App. A.4, Alg. 1 of 000_*).

000_* is Suetake et al., "Synaptic Interaction Penalty" (``/work/shared/papers/000_f3151c798de7c65c.txt``). Each
trained model is one point: x = E_SNN / E_baseline (``energy_rel``), y = test accuracy as a fraction, and the
intensity parameter that produced it (λ' for the penalties, the SynOp target or ρ for conversion). A cutoff P [%]
keeps the scores on models that still work ("data with lower accuracy than it are omitted", Sec. 4.3).

Choices where the paper is ambiguous (details and evidence in ``docs/scores.md``):

* AUC follows Alg. 1 literally: points below P' are not removed, the interpolated envelope is clipped at y = P'.
  ``drop_below_cutoff=True`` removes them first instead; the two differ only by the triangle where the envelope
  crosses y = P' between a point below and a point above the cutoff.
* Spearman is reported so that a perfect controller scores +1: −ρ(intensity, energy) for intensities that should
  lower the energy (λ'), +ρ for intensities that should raise it (a SynOp target, ρ scaling).
* MI defaults to the Kraskov (KSG, k = 3) estimator on the ranks of (intensity, energy), in nats, deterministic.
  ``estimator="plugin"`` reproduces the paper's numbers, which equal the entropy of the sample (≈ ln n).
* Over seeds: mean and sample standard deviation (ddof = 1) of the per-seed scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["auc", "spearman", "mutual_information", "curve_scores", "score_table", "format_score_table",
           "metric_names", "INTENSITY_DIRECTION"]

#: Which way the energy should move as each kind of intensity grows (the ``intensity_name`` column of the results
#: table). "decreasing": a penalty strength; "increasing": a budget the energy should follow. Robust scaling's
#: percentile divides the weights by a larger activation quantile as it grows, so fewer spikes: "decreasing".
INTENSITY_DIRECTION = {"lambda_norm": "decreasing", "lambda": "decreasing", "target_synops": "increasing",
                       "rho": "increasing", "percentile": "decreasing"}

_DIRECTIONS = ("decreasing", "increasing")
_ESTIMATORS = ("ksg", "plugin")


# ---------------------------------------------------------------------------------------------------------- inputs
def _cutoff(P: float) -> float:
    """P [%] → P' = P/100, with 0 <= P < 100 as Alg. 1 requires."""
    try:
        P = float(P)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff P must be a number in percent (0 <= P < 100), got {P!r}") from None
    if not math.isfinite(P) or not 0.0 <= P < 100.0:
        raise ValueError(f"cutoff P must be in percent with 0 <= P < 100 (Alg. 1 of 000_*), got {P!r}")
    return P / 100.0


def _array(values: Sequence[float], name: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "NaN" if np.isnan(a[i]) else "infinite"
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite value(s) (first: {kind} at index {i}); "
                         "drop failed models before scoring")
    return a


def _points(energy: Sequence[float], accuracy: Sequence[float],
            intensity: Sequence[float] | None = None) -> tuple[np.ndarray, ...]:
    """Validated arrays (x = energy rate >= 0, y = accuracy fraction in [0, 1][, intensity]) of equal length."""
    x = _array(energy, "energy")
    y = _array(accuracy, "accuracy")
    arrays = [x, y]
    if intensity is not None:
        arrays.insert(0, _array(intensity, "intensity"))
    if len({a.size for a in arrays}) != 1:
        raise ValueError("intensity, energy and accuracy must have the same length, got "
                         + ", ".join(str(a.size) for a in arrays))
    if x.size == 0:
        raise ValueError("no points to score: energy and accuracy are empty")
    if (x < 0).any():
        raise ValueError(f"energy must be >= 0 (energy normalised by the baseline), got min {x.min():g}")
    if (y < 0).any():
        raise ValueError(f"accuracy must be a fraction in [0, 1], got min {y.min():g}")
    if (y > 1).any():
        raise ValueError(f"accuracy must be a fraction in [0, 1], got max {y.max():g}: it looks like percent; "
                         "pass accuracy/100")
    return tuple(arrays)


# ------------------------------------------------------------------------------------------------------------- AUC
def _area_above(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """∫ max(c(x) − level, 0) dx of the piecewise linear curve c through (x, y) with non-decreasing y."""
    area = 0.0
    for xa, ya, xb, yb in zip(x[:-1], y[:-1], x[1:], y[1:]):
        width = xb - xa
        if width <= 0.0 or yb <= level:
            continue
        if ya >= level:
            area += width * ((ya + yb) / 2.0 - level)
        else:  # crosses the level at xa + t·width: only the triangle above it counts
            t = (level - ya) / (yb - ya)
            area += 0.5 * (1.0 - t) * width * (yb - level)
    return area


def auc(energy: Sequence[float], accuracy: Sequence[float], P: float, *, drop_below_cutoff: bool = False) -> float:
    """AUC(P) of Alg. 1 / App. A.4 of 000_*, as a fraction in [0, 1] (the tables print it ×100 as %).

    ``energy`` is the energy consumption rate (E / E_baseline, so the baseline sits at x = 1), ``accuracy`` the
    accuracy as a fraction, ``P`` the cutoff in percent (0 <= P < 100). Alg. 1: sort by x; drop x > 1; prepend
    (x_1, 0); append (1, max y); keep the points whose y is >= every earlier y; interpolate linearly; A(P) = area
    of the curve above y = P' over x in [0, 1] (nothing left of x_1); return A(P) / (1 − P').

    Points below the cutoff are kept (Alg. 1 has no such step): the clipping at y = P' removes them, except that
    the segment from the last envelope point below P' to the first above contributes its triangle above P'. With
    ``drop_below_cutoff=True`` they are removed before Alg. 1 instead (the curve then rises vertically at the first
    point with accuracy >= P'). Returns 0.0 when every point has x > 1 (no model cheaper than the baseline).
    Raises ValueError for empty input, NaN/inf, negative energy, accuracy outside [0, 1] (percent) or a bad P.
    """
    x, y = _points(energy, accuracy)
    p = _cutoff(P)
    if drop_below_cutoff:
        keep = y >= p
        x, y = x[keep], y[keep]
    order = np.lexsort((y, x))  # by x, ties by y: equal x gives a vertical step, whatever the input order
    x, y = x[order], y[order]
    keep = x <= 1.0
    x, y = x[keep], y[keep]
    if x.size == 0:
        return 0.0
    xs = np.concatenate(([x[0]], x, [1.0]))
    ys = np.concatenate(([0.0], y, [y.max()]))
    earlier_max = np.concatenate(([-np.inf], np.maximum.accumulate(ys)[:-1]))
    envelope = ys >= earlier_max  # y_j <= y_i for all j < i
    return float(_area_above(xs[envelope], ys[envelope], p) / (1.0 - p))


# -------------------------------------------------------------------------------------------------------- Spearman
def _above(intensity, energy, accuracy, P) -> tuple[np.ndarray, np.ndarray]:
    lam, x, y = _points(energy, accuracy, intensity)
    keep = y >= _cutoff(P)
    return lam[keep], x[keep]


def spearman(intensity: Sequence[float], energy: Sequence[float], accuracy: Sequence[float], P: float, *,
             direction: str = "decreasing") -> float:
    """Spearman(P) of Sec. 4.3 / App. A.4 of 000_*: rank correlation of intensity and energy, signed so +1 is best.

    Computed over the points with accuracy >= P/100. ``direction="decreasing"`` (λ', a penalty that should lower
    the energy) returns −ρ(intensity, energy); ``"increasing"`` (a SynOp target or ρ, which the energy should
    follow) returns +ρ. Ties get average ranks (scipy.stats.spearmanr). NaN when fewer than 2 points pass the
    cutoff or either variable is constant over them.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    lam, x = _above(intensity, energy, accuracy, P)
    if lam.size < 2 or np.ptp(lam) == 0 or np.ptp(x) == 0:
        return math.nan
    from scipy.stats import spearmanr

    rho = float(spearmanr(lam, x)[0])
    return -rho if direction == "decreasing" else rho


# -------------------------------------------------------------------------------------------------------------- MI
def mutual_information(intensity: Sequence[float], energy: Sequence[float], accuracy: Sequence[float], P: float, *,
                       estimator: str = "ksg", n_neighbors: int = 3, random_state: int = 0) -> float:
    """MI(P) of Sec. 4.3 / App. A.4 of 000_*: mutual information of intensity and energy, in nats.

    Computed over the points with accuracy >= P/100. The paper names no estimator. ``"ksg"`` (default): the
    Kraskov–Stögbauer–Grassberger k-NN estimator (sklearn ``mutual_info_regression``, k = ``n_neighbors``, fixed
    ``random_state`` for its tie-breaking jitter) on the ranks of both variables, so any monotone re-parametrisation
    (λ' vs log λ') gives the same value; NaN when no more than ``n_neighbors`` points pass. ``"plugin"``: the
    plug-in MI of the exact values taken as categories (sklearn ``mutual_info_score``), which reproduces the paper's
    numbers — it equals ln n for n distinct points, so it counts surviving models rather than measuring
    dependence; NaN when fewer than 2 points pass. A constant variable gives 0.0.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
    if int(n_neighbors) != n_neighbors or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    lam, x = _above(intensity, energy, accuracy, P)
    if estimator == "plugin":
        if lam.size < 2:
            return math.nan
        from sklearn.metrics import mutual_info_score

        return float(mutual_info_score(_categories(lam), _categories(x)))
    if lam.size <= n_neighbors:
        return math.nan
    if np.ptp(lam) == 0 or np.ptp(x) == 0:
        return 0.0
    from scipy.stats import rankdata
    from sklearn.feature_selection import mutual_info_regression

    mi = mutual_info_regression(rankdata(lam).reshape(-1, 1), rankdata(x), n_neighbors=int(n_neighbors),
                                random_state=random_state)
    return float(mi[0])


def _categories(a: np.ndarray) -> np.ndarray:
    """Integer codes of the distinct values (exact equality)."""
    return np.unique(a, return_inverse=True)[1].ravel()


# ---------------------------------------------------------------------------------------------- curves and tables
def metric_names(P_list: Iterable[float] = (70, 50)) -> list[str]:
    """Column names in the order of Table 4 of 000_*: AUC(P)…, Spearman(P)…, MI(P)…."""
    Ps = [_fmt_P(P) for P in P_list]
    return [f"{m}({P})" for m in ("AUC", "Spearman", "MI") for P in Ps]


def _fmt_P(P: float) -> str:
    _cutoff(P)
    return f"{float(P):g}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _usable(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> tuple[list[Mapping[str, Any]], int]:
    """Rows of trained models (``status`` absent or "ok") that carry energy and accuracy; and how many were skipped."""
    energy_key, accuracy_key = keys
    kept, skipped = [], 0
    for row in rows:
        if row.get("status", "ok") not in (None, "ok") or _missing(row.get(energy_key)) \
                or _missing(row.get(accuracy_key)):
            skipped += 1
        else:
            kept.append(row)
    return kept, skipped


def curve_scores(rows: Iterable[Mapping[str, Any]], P_list: Sequence[float] = (70, 50), *,
                 intensity_key: str = "intensity", energy_key: str = "energy_rel", accuracy_key: str = "accuracy",
                 direction: str = "decreasing", mi_estimator: str = "ksg",
                 drop_below_cutoff: bool = False) -> dict[str, float]:
    """AUC(P), Spearman(P) and MI(P) of one curve (one method, one seed), App. A.4 / Alg. 1 of 000_*.

    ``rows`` are dicts, one per trained model; rows whose ``status`` is not "ok" or that lack energy or accuracy
    are skipped. Points without an intensity (None) count for AUC only. Returns ``{"AUC(70)": …, …,
    "N(70)": points with accuracy >= 70 %, …, "n_points": …, "n_skipped": …}``; AUC as a fraction.
    """
    kept, skipped = _usable(rows, (energy_key, accuracy_key))
    out: dict[str, float] = {}
    if not kept:
        raise ValueError(f"no usable rows to score ({skipped} skipped: failed or without {energy_key}/"
                         f"{accuracy_key})")
    x = [float(r[energy_key]) for r in kept]
    y = [float(r[accuracy_key]) for r in kept]
    y_checked = _points(x, y)[1]
    with_lam = [i for i, r in enumerate(kept) if not _missing(r.get(intensity_key))]
    lam = [float(kept[i][intensity_key]) for i in with_lam]
    xl, yl = [x[i] for i in with_lam], [y[i] for i in with_lam]
    for P in P_list:
        name = _fmt_P(P)
        out[f"AUC({name})"] = auc(x, y, P, drop_below_cutoff=drop_below_cutoff)
        if lam:
            out[f"Spearman({name})"] = spearman(lam, xl, yl, P, direction=direction)
            out[f"MI({name})"] = mutual_information(lam, xl, yl, P, estimator=mi_estimator)
        else:
            out[f"Spearman({name})"] = out[f"MI({name})"] = math.nan
        out[f"N({name})"] = int((y_checked >= _cutoff(P)).sum())
    out["n_points"] = len(kept)
    out["n_skipped"] = skipped
    return out


def _direction_of(label: Any, rows: list[Mapping[str, Any]], direction: str | Mapping[str, str]) -> str:
    if isinstance(direction, Mapping):
        direction = direction.get(label, "auto")
    if direction == "auto":
        names = {r.get("intensity_name") for r in rows} - {None, ""}
        dirs = set()
        for n in names:
            if n not in INTENSITY_DIRECTION:
                raise ValueError(f"curve {label!r}: unknown intensity_name {n!r}; pass direction= explicitly "
                                 f"(known: {sorted(INTENSITY_DIRECTION)})")
            dirs.add(INTENSITY_DIRECTION[n])
        if len(dirs) > 1:
            raise ValueError(f"curve {label!r} mixes intensities {sorted(names)} that move the energy both ways")
        d = dirs.pop() if dirs else "decreasing"
    else:
        d = direction
    if d not in _DIRECTIONS:
        raise ValueError(f"direction must be 'auto', one of {_DIRECTIONS} or a mapping label -> direction, "
                         f"got {d!r}")
    return d


def score_table(rows: Iterable[Mapping[str, Any]], group_key: str = "label", seed_key: str = "seed",
                intensity_key: str = "intensity", energy_key: str = "energy_rel", accuracy_key: str = "accuracy",
                P_list: Sequence[float] = (70, 50), *, direction: str | Mapping[str, str] = "auto",
                mi_estimator: str = "ksg", ddof: int = 1, pool_seeds: bool = False,
                drop_below_cutoff: bool = False) -> list[dict[str, Any]]:
    """Table 4 of 000_*: per curve (``group_key``) the scores of each seed, then their mean and std over seeds.

    Failed rows (``status`` != "ok") and rows without energy/accuracy (e.g. the ANN reference) are skipped; groups
    left empty are omitted. Each entry: ``label``, ``n_seeds``, ``seeds``, for every metric M of
    :func:`metric_names` the mean ``M``, the std ``M_std`` (ddof = ``ddof``, default 1: sample std; NaN with one
    value) and ``M_n`` (seeds with a finite value; NaN seeds are left out of mean and std), the mean ``N(P)``,
    ``n_curves`` (point sets scored) and ``per_seed`` (seed -> :func:`curve_scores`). ``pool_seeds=True`` scores all seeds of a curve as one point set
    (what the paper's single, ±-less numbers appear to be; std is then NaN). ``direction``: "auto" (from the rows'
    ``intensity_name`` via :data:`INTENSITY_DIRECTION`, λ' when absent), "decreasing", "increasing" or a mapping
    label -> direction ("auto" for labels it lacks). Groups appear in order of first occurrence.
    """
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        if group_key not in row:
            raise ValueError(f"row {i} has no {group_key!r} key (the curve / method name)")
        groups.setdefault(row[group_key], []).append(row)
    names = metric_names(P_list)
    counts = [f"N({_fmt_P(P)})" for P in P_list]
    table = []
    for label, members in groups.items():
        kept, _ = _usable(members, (energy_key, accuracy_key))
        if not kept:
            continue
        d = _direction_of(label, kept, direction)
        by_seed: dict[Any, list[Mapping[str, Any]]] = {}
        for r in kept:
            by_seed.setdefault("pooled" if pool_seeds else r.get(seed_key), []).append(r)
        per_seed = {}
        for seed, rs in by_seed.items():
            try:
                per_seed[seed] = curve_scores(rs, P_list, intensity_key=intensity_key, energy_key=energy_key,
                                              accuracy_key=accuracy_key, direction=d, mi_estimator=mi_estimator,
                                              drop_below_cutoff=drop_below_cutoff)
            except ValueError as exc:
                raise ValueError(f"curve {label!r}, seed {seed!r}: {exc}") from None
        seeds = list(dict.fromkeys(r.get(seed_key) for r in kept))
        try:
            seeds.sort()
        except TypeError:
            seeds.sort(key=str)
        entry: dict[str, Any] = {"label": label, "n_seeds": len(seeds), "seeds": seeds, "n_curves": len(per_seed)}
        for m in names + counts:
            vals = np.array([s[m] for s in per_seed.values()], dtype=float)
            vals = vals[np.isfinite(vals)]
            entry[m] = float(vals.mean()) if vals.size else math.nan
            if m in names:
                entry[f"{m}_std"] = float(vals.std(ddof=ddof)) if vals.size > ddof and not pool_seeds else math.nan
                entry[f"{m}_n"] = int(vals.size)
        entry["per_seed"] = per_seed
        table.append(entry)
    return table


def format_score_table(table: Sequence[Mapping[str, Any]], P_list: Sequence[float] = (70, 50)) -> str:
    """A Markdown table in the style of Table 4 of 000_*: "mean ± std" cells, AUC in %, NaN as "n/a".

    A cell computed from fewer seeds than the curve has (NaN seeds left out) says so: "0.9000 ± 0.0100 (2/3)".
    """
    names = metric_names(P_list)
    head = ["Method"] + [f"{m}[%]" if m.startswith("AUC") else m for m in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(names)) + "|"]
    for e in table:
        cells = [str(e.get("label"))]
        for m in names:
            scale, digits = (100.0, 2) if m.startswith("AUC") else (1.0, 4) if m.startswith("Spearman") else (1.0, 3)
            mean, std = e.get(m, math.nan), e.get(f"{m}_std", math.nan)
            if mean is None or not math.isfinite(mean):
                cells.append("n/a")
                continue
            cell = f"{mean * scale:.{digits}f}"
            if std is not None and math.isfinite(std):
                cell += f" ± {std * scale:.{digits}f}"
            n, total = e.get(f"{m}_n"), e.get("n_curves")
            if n is not None and total and n < total:
                cell += f" ({n}/{total})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
