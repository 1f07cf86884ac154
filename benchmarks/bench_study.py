"""Run a study (default studies/cnn7-fmnist.toml) on real data, score its curves, check the papers' orderings,
write its report to docs/studies/<name>/ and a section of docs/benchmarks.md.

    python benchmarks/bench_study.py studies/cnn7-fmnist.toml [--work DIR] [--data-root D]

Resumable: re-running with the same --work skips finished runs (e.g. to regenerate the report only).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from common import DOC, materialize, write_section

CURVE_METHODS = {"syn", "total", "balance", "qrelu", "rho"}


def _fmt(x: float, pct: bool = True) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else (
        f"{100 * x:.1f}" if pct else f"{x:.3f}")


def equal_energy(rows: list[dict]) -> list[str]:
    """The best accuracy of each route at or below each energy level the other route reaches (seed means):
    AUC(P) only sees energies <= 1x the reference, so a route whose points all lie above it scores 0 there."""
    ok = [r for r in rows if r["status"] == "ok" and r["method"] in CURVE_METHODS | {"none"}
          and r["energy_rel"] is not None and not math.isnan(r["energy_rel"])]
    lines = []
    for route, other in (("conversion", "direct"), ("direct", "conversion")):
        mine = [r for r in ok if r["route"] == route]
        theirs = [r for r in ok if r["route"] == other]
        if not mine or not theirs:
            continue
        cheapest = min(mine, key=lambda r: r["energy_rel"])
        rivals = [r for r in theirs if r["energy_rel"] <= cheapest["energy_rel"] * 1.05]
        if rivals:
            best = max(rivals, key=lambda r: r["accuracy"])
            lines.append(f"- at <= {cheapest['energy_rel']:.2f}x E_baseline (the cheapest {route} model, "
                         f"{cheapest['label']}: {100 * cheapest['accuracy']:.2f}%) the best {other} model is "
                         f"{best['label']} (λ'/target {best['intensity']:g}) with {100 * best['accuracy']:.2f}% at "
                         f"{best['energy_rel']:.2f}x")
        else:
            lines.append(f"- the cheapest {route} model ({cheapest['label']}, {cheapest['energy_rel']:.2f}x "
                         f"E_baseline, {100 * cheapest['accuracy']:.2f}%) costs less than any {other} model")
    return lines


def orderings(table: list[dict], P: int = 50) -> list[str]:
    """The paper's orderings (Table 4/21 of 000_*) checked on AUC(P) means; one line each, with the numbers."""
    auc = {r["label"]: r.get(f"AUC({P})", math.nan) for r in table}
    lines = []

    def check(a: str, b: str, what: str) -> None:
        if a in auc and b in auc:
            ok = auc[a] > auc[b]
            lines.append(f"- {what}: {a} {_fmt(auc[a])}% vs {b} {_fmt(auc[b])}% -> "
                         f"{'holds' if ok else 'DOES NOT hold'}")
    check("Ω_syn p=1", "Ω_total p=1", f"AUC({P}) Ω_syn(p=1) > Ω_total(p=1)")
    check("Ω_total p=1", "Ω_balance p=1", f"AUC({P}) Ω_total(p=1) > Ω_balance(p=1)")
    for pen in ("Ω_syn", "Ω_total", "Ω_balance"):
        check(f"{pen} p=1", f"{pen} p=2", f"AUC({P}) {pen}: p=1 > p=2")
    direct = {k: v for k, v in auc.items() if k.startswith("Ω") and not math.isnan(v)}
    conv = {k: v for k, v in auc.items() if k.startswith(("QReLU", "ρ")) and not math.isnan(v)}
    if direct and conv:
        bd, bc = max(direct, key=direct.get), max(conv, key=conv.get)
        check(bd, bc, f"AUC({P}) best direct > best conversion")
    return lines


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def direct_checks(rows: list[dict]) -> list[str]:
    """Issue 4's claims on the study's own numbers (seed means): S2NN vs ReLU at the same budget; Ω_syn(p=1)
    lowering E_SNN monotonically in λ'; the lowest energy within 1 point of the unpenalised net."""
    ok = [r for r in rows if r["status"] == "ok"]
    ann = _mean(r["accuracy"] for r in ok if r["route"] == "ann")
    base = _mean(r["accuracy"] for r in ok if r["method"] == "none")
    lines = []
    if not math.isnan(ann) and not math.isnan(base):
        lines.append(f"- unpenalised S2NN {100 * base:.2f}% vs ReLU ANN {100 * ann:.2f}% with the same budget: "
                     f"gap {100 * (ann - base):.2f} pt ({'within' if ann - base <= 0.015 else 'NOT within'} 1.5 pt)")
    syn = [r for r in ok if r["label"] == "Ω_syn p=1"]
    lams = sorted({r["intensity"] for r in syn})
    pts = [(lam, _mean(r["energy_rel"] for r in syn if r["intensity"] == lam),
            _mean(r["accuracy"] for r in syn if r["intensity"] == lam)) for lam in lams]
    if pts:
        energies = [e for _, e, _ in pts]
        mono = all(a > b for a, b in zip(energies, energies[1:]))
        lines.append("- Ω_syn(p=1) E_SNN/E_baseline over λ' " + ", ".join(
            f"{lam:g}: {100 * e:.1f}% at {100 * a:.2f}%" for lam, e, a in pts)
            + f" -> {'monotone' if mono else 'NOT monotone'}")
        within = [(e, lam) for lam, e, a in pts if not math.isnan(base) and a >= base - 0.01]
        if within:
            e, lam = min(within)
            lines.append(f"- lowest energy within 1 pt of the unpenalised net: λ'={lam:g}, {100 * e:.1f}% of "
                         f"E_baseline ({'at most' if e <= 0.5 else 'MORE than'} half)")
        else:
            lines.append("- no Ω_syn(p=1) point stays within 1 pt of the unpenalised net")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", nargs="?", default=str(Path(__file__).resolve().parents[1] / "studies" /
                                                     "cnn7-fmnist.toml"))
    ap.add_argument("--work", default="/tmp/synopt-study", help="sweep folder parent (resumable)")
    ap.add_argument("--data-root", help="materialized data root (default: materialize ../shared/data into WORK)")
    ap.add_argument("--workers", type=int)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from synopt.compare import scores
    from synopt.compare.study import load_study
    from synopt.compare.sweep import sweep

    work = Path(args.work)
    root = args.data_root
    if root is None:
        root = str(work / "data")
        if not Path(root).is_dir():
            materialize(root)
    study = load_study(args.study, root)
    t0 = time.perf_counter()
    res = sweep(args.study, out=work / study.name, workers=args.workers, data_root=root)
    wall = time.perf_counter() - t0
    run_time = sum(r.get("wall_time_s") or 0 for r in {r["run"]: r for r in res.rows}.values())
    curves = [r for r in res.rows if r["status"] == "ok" and r["method"] in CURVE_METHODS]
    table = scores.score_table(curves, P_list=(70, 50))
    score_md = scores.format_score_table(table, (70, 50))
    ann = [r for r in res.rows if r["route"] == "ann" and r["status"] == "ok"]
    ref = [r for r in res.rows if r["method"] == "none" and r["status"] == "ok"]
    energy_lines, direct_lines = equal_energy(res.rows), direct_checks(res.rows)
    best = sorted((r for r in res.rows if r["status"] == "ok" and r["route"] != "ann"),
                  key=lambda r: -r["accuracy"])[:1]
    doc_dir = DOC.parent / "studies" / study.name
    report_note = ""
    try:
        from synopt.compare.report import write_report

        write_report(res.path, doc_dir / "report.html", doc_dir / "report.md")
        report_note = (f"Report: [`docs/studies/{study.name}/report.md`](studies/{study.name}/report.md) "
                       f"(self-contained HTML next to it).")
    except ImportError as exc:
        report_note = f"(report not written: {exc})"
    body = [
        f"Study `{Path(args.study).name}`: {study.description}",
        f"model {study.model}, dataset {study.dataset}, seeds {study.seeds}, budget {study.budget}; "
        f"{len({r['run'] for r in res.rows})} runs ({len(res.failed)} failed), "
        + (f"sweep wall time {wall / 60:.1f} min this invocation ({len(res.skipped)} runs were already finished), "
           if res.ran else "all runs finished in earlier invocations (this one re-read them), ")
        + f"{run_time / 60:.1f} run-minutes in all (the sum of the runs' wall times), "
        f"{study.workers or os.cpu_count()} workers x "
        f"{study.threads_per_worker} thread(s).",
        "",
        "ANN (ReLU, same budget): " + ", ".join(f"seed {r['seed']}: {100 * r['accuracy']:.2f}%" for r in ann),
        "; unpenalised S2NN (E_baseline): " + ", ".join(
            f"seed {r['seed']}: {100 * r['accuracy']:.2f}% at {r['synops']:,.0f} SynOps" for r in ref),
        "",
        "Curve scores (App. A.4 / Alg. 1 of 000_*; energy relative to the unpenalised S2NN of the same seed; "
        "mean ± std over seeds; docs/scores.md):",
        "",
        score_md,
        "",
        "The papers' orderings (Table 4/21 of 000_*):",
        "",
        *orderings(table, 50),
        *(["", "At equal energy (AUC(P) ignores energies above 1x the reference):", "", *energy_lines]
          if energy_lines else []),
        *(["", "Direct route vs ReLU (issue 4):", "", *direct_lines] if direct_lines else []),
        "",
        report_note,
    ]
    if best:
        b = best[0]
        body.insert(5, f"; most accurate SNN: {b['label']} ({100 * b['accuracy']:.2f}%, {b['synops']:,.0f} SynOps)")
    write_section(f"study-{study.name}", f"Study: {study.name}", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
