"""Rows of the results table: one per trained model (a conversion schedule gives one row per point).

Every number is read from a run folder that ``synopt convert``, ``synopt finetune --direct`` or ``synopt train``
wrote; energies come from :mod:`synopt.energy` (E_SNN = E_AC · SynOps, E_ANN = E_MAC · MACs). SynOps are those
measured on the sinabs simulation where the run has one (direct runs: the folded T = 1 export), excluding the SynOps
caused by input events (they do not depend on the weights).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

from synopt import energy

COLUMNS = ("run", "run_dir", "point", "status", "error", "route", "method", "label", "intensity", "intensity_name",
           "surrogate", "penalty", "p", "timesteps", "seed", "accuracy", "synops", "e_snn_j", "energy_rel",
           "e_ann_j", "macs", "synops_per_mac", "dead_rate", "R", "near_zero_weights", "wall_time_s")

PENALTY_NAMES = {"syn": "Ω_syn", "total": "Ω_total", "balance": "Ω_balance"}
CONVERSION_NAMES = {"qrelu": "QReLU", "rho": "ρ scaling", "scale": "robust scaling", "baseline": "conversion baseline"}
NEAR_ZERO = 1e-3  # |w| < NEAR_ZERO · max|w| of its layer counts as near zero (Fig. 6 of 003_*)


def _load(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a finished run folder: {path.name} is missing")
    return json.loads(path.read_text())


def near_zero_fraction(state_dict: dict) -> float | None:
    """Fraction of conv/linear weights with |w| < 1e-3 · max|w| of their own layer (Fig. 6 of 003_*)."""
    near, total = 0, 0
    for key, w in state_dict.items():
        if key.endswith("weight") and getattr(w, "ndim", 0) >= 2:
            m = float(w.abs().max())
            near += int((w.abs() < NEAR_ZERO * m).sum()) if m > 0 else w.numel()
            total += w.numel()
    return near / total if total else None


def _weights(path: Path) -> float | None:
    if not path.is_file():
        return None
    from synopt.runs import load_checkpoint

    return near_zero_fraction(load_checkpoint(path)["state_dict"])


def _row(**values: Any) -> dict[str, Any]:
    row = {c: None for c in COLUMNS}
    row.update(values)
    if row["synops"] is not None and row["macs"]:
        row["synops_per_mac"] = row["synops"] / row["macs"]
    return row


def _direct_rows(run: Path, cfg: dict, m: dict, em: energy.EnergyModel) -> list[dict]:
    sim = m.get("sinabs_t1") or {}
    synops = sim.get("synops", m["synops"])
    penalty = cfg["penalty"]
    label = f"{PENALTY_NAMES[penalty]} p={cfg['p']:g}" if penalty != "none" else "direct, no penalty"
    if cfg.get("surrogate", "s2nn") != "s2nn":
        label += f" ({cfg['surrogate']})"
    if cfg.get("from_ann"):
        label += " from ANN"
    return [_row(route="direct", method=penalty, label=label, intensity=float(cfg["lambda_norm"]),
                 intensity_name="lambda_norm", surrogate=cfg.get("surrogate"), penalty=penalty, p=cfg["p"],
                 timesteps=1, seed=cfg["seed"], accuracy=sim.get("accuracy", m["accuracy"]), synops=synops,
                 e_snn_j=em.snn_joules(synops), e_ann_j=em.ann_joules(m["macs"]), macs=m["macs"],
                 dead_rate=m.get("dead_rate"), R=m.get("R"), near_zero_weights=_weights(run / "model.pt"))]


def _at(pt: dict, T: int) -> list[tuple[int, dict]]:
    """(T, measurements) of a conversion point: the run's own T first, then its ``at_timesteps`` re-simulations."""
    return [(T, pt)] + [(int(t), m) for t, m in sorted(pt.get("at_timesteps", {}).items(), key=lambda x: int(x[0]))]


def _conversion_rows(run: Path, cfg: dict, m: dict, em: energy.EnergyModel) -> list[dict]:
    method = cfg["method"]
    common = dict(route="conversion", seed=cfg["seed"], e_ann_j=em.ann_joules(m["macs"]), macs=m["macs"])
    rows = [_row(method="baseline", label=f"{CONVERSION_NAMES['baseline']} T={t}", point=-1, timesteps=t,
                 accuracy=b["sim_accuracy"], synops=b["sim_synops"], e_snn_j=em.snn_joules(b["sim_synops"]),
                 **common) for t, b in _at(m["baseline"], cfg["timesteps"])]
    for i, pt in enumerate(m["points"]):
        intensity, name = {"qrelu": (pt.get("target"), "target_synops"), "rho": (pt.get("rho"), "rho"),
                           "scale": (cfg.get("percentile"), "percentile")}[method]
        zero = _weights(run / "points" / f"point{i}.pt") if method == "qrelu" else None
        rows += [_row(method=method, label=f"{CONVERSION_NAMES[method]} T={t}", point=i, timesteps=t,
                      intensity=intensity, intensity_name=name, accuracy=s["sim_accuracy"], synops=s["sim_synops"],
                      e_snn_j=em.snn_joules(s["sim_synops"]), near_zero_weights=zero, **common)
                 for t, s in _at(pt, cfg["timesteps"])]
    return rows


def _ann_rows(run: Path, cfg: dict, m: dict, em: energy.EnergyModel) -> list[dict]:
    return [_row(route="ann", method="ann", label="ANN (ReLU)", timesteps=None, seed=cfg.get("seed"),
                 accuracy=m["test_acc"], e_ann_j=em.ann_joules(m["macs"]), macs=m["macs"],
                 near_zero_weights=_weights(run / "model.pt"))]


def rows_from_run(run_dir: str | Path, energy_model: str = "cmos45nm", reference_j: float | None = None,
                  base: str | Path | None = None) -> list[dict[str, Any]]:
    """The result rows of one finished run folder (``energy_rel`` = E_SNN / ``reference_j`` when given, else the
    run's own reference: a direct run's ``--baseline``, a conversion run's plain-weights SNN)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    cfg = _load(run / "config.json")["config"]
    m = _load(run / "metrics.json")
    em = energy.get_energy_model(energy_model)
    command = cfg.get("command", "")
    if command.startswith("finetune"):
        rows = _direct_rows(run, cfg, m, em)
        own_ref = m.get("e_baseline_j")
    elif command == "convert":
        rows = _conversion_rows(run, cfg, m, em)
        own_ref = rows[0]["e_snn_j"]
    elif command == "train":
        cfg = {**cfg, "seed": cfg.get("train", {}).get("seed")}
        rows = _ann_rows(run, cfg, m, em)
        own_ref = None
    else:
        raise ValueError(f"{run}: unknown run kind {command!r} in config.json")
    sweep = json.loads((run / "sweep.json").read_text()) if (run / "sweep.json").is_file() else {}
    ref = reference_j or own_ref
    name = run.name
    rel = str(run.relative_to(base)) if base else str(run)
    for row in rows:
        row.update(run=name, run_dir=rel, status="ok", wall_time_s=sweep.get("wall_time_s"))
        if row["point"] is None:
            row["point"] = 0
        if ref and row["e_snn_j"] is not None:
            row["energy_rel"] = row["e_snn_j"] / ref
    return rows


def failed_row(run_id: str, kind: str, seed: int, error: str, run_dir: str, wall_time_s: float | None) -> dict:
    """The row of a run that did not end; its route is the run's kind (ann, direct or conversion)."""
    return _row(run=run_id, run_dir=run_dir, point=0, status="failed", error=error, route=kind, seed=seed,
                wall_time_s=wall_time_s)


def to_csv(rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()})
    return buf.getvalue()
