"""`synopt sweep STUDY`: run every point of a study as an ordinary run folder, in parallel, resumable.

Layout of a sweep folder::

    SWEEP/study.json        the study as read (the exact configuration) and the expanded plan
    SWEEP/runs/<run_id>/    one run folder per run (config.json, metrics.json, ...) + sweep.json when it ended
    SWEEP/results.csv|json  one row per trained model (synopt.compare.results.COLUMNS), rewritten after every run

A run is finished when its ``sweep.json`` says ``ok``; a restarted sweep skips those and re-runs the rest (a run
killed half-way resumes from its own checkpoints). A failed run is recorded with its error and traceback
(``sweep.json`` + ``error.txt``) and does not stop the sweep; runs that start from its model are marked failed too.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from synopt.compare.results import failed_row, rows_from_run, to_csv
from synopt.compare.study import RunSpec, Study, expand, load_study
from synopt.runs import write_json, write_text


class SweepError(ValueError):
    """A sweep that cannot start; the message says how to fix it."""


# ---- one run (executed in a worker process, a Ray task or in-process) -------------------------------------------------


def _ann_source(ann_dir: Path):
    from synopt.convert.source import ModelSource
    from synopt.runs import load_checkpoint

    ckpt = ann_dir / "model.pt"
    info = load_checkpoint(ckpt)
    c, h, w = info["input_shape"]
    return ModelSource("zoo", name=info["model"], checkpoint=str(ckpt),
                       overrides={"in_channels": c, "input_size": [h, w], "num_classes": info["num_classes"]})


def _execute(spec: RunSpec, out: Path, runs: Path) -> None:
    p = dict(spec.params)
    if spec.kind == "ann":
        from synopt.finetune.ann import train_ann

        train_ann(out=out, progress=False, **p)
    elif spec.kind == "direct":
        from synopt.finetune.direct import train_direct

        if spec.needs:
            p["from_ann"] = str(runs / spec.needs / "model.pt")
        train_direct(out=out, progress=False, **p)
    else:
        from synopt.convert.pipeline import ConvertConfig, run_conversion

        for key in ("model", "data_root"):
            p.pop(key)
        frames = {k: p.pop(k) for k in ("event_count", "n_time_bins") if k in p}
        cfg = ConvertConfig(source=_ann_source(runs / spec.needs), out=str(out), data_root=spec.params["data_root"],
                            frames=frames, progress=False, **p)
        run_conversion(cfg)


def run_one(spec: dict, sweep_dir: str, threads: int = 1, energy_model: str = "cmos45nm") -> dict:
    """Run one spec into ``sweep_dir/runs/<run_id>``; never raises: failures come back as ``status: failed``."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    spec_obj = RunSpec(**spec)
    runs = Path(sweep_dir) / "runs"
    out = runs / spec_obj.run_id
    t0 = time.perf_counter()
    try:
        _execute(spec_obj, out, runs)
        rows = rows_from_run(out, energy_model, base=sweep_dir)
        status, error = "ok", None
    except BaseException as exc:  # noqa: BLE001 - recorded, the sweep goes on
        if isinstance(exc, KeyboardInterrupt):
            raise
        rows, status, error = [], "failed", f"{type(exc).__name__}: {exc}"
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "error.txt", traceback.format_exc())
    wall = time.perf_counter() - t0
    for row in rows:
        row["wall_time_s"] = wall
    record = {"run_id": spec_obj.run_id, "status": status, "error": error, "wall_time_s": wall,
              "spec": spec, "rows": rows}
    write_json(out / "sweep.json", record)
    return record


# ---- executors --------------------------------------------------------------------------------------------------------


class _Inline:
    """workers = 1: run in this process (no pickling, plain tracebacks)."""

    def submit(self, fn: Callable, *args) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut

    def wait_any(self, handles: list) -> list:
        return [h for h in handles if h.done()]

    def result(self, handle) -> dict:
        return handle.result()

    def close(self) -> None:
        pass


class _Pool(_Inline):
    def __init__(self, workers: int):
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))

    def submit(self, fn: Callable, *args) -> Future:
        return self.pool.submit(fn, *args)

    def wait_any(self, handles: list) -> list:
        return list(wait(handles, return_when=FIRST_COMPLETED).done)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Ray:
    """Ray tasks (``--ray-address auto|HOST:PORT``, or ``local`` to start a private instance on this machine)."""

    def __init__(self, address: str, threads: int, workers: int | None):
        try:
            import ray
        except ImportError:
            raise SweepError("--ray-address needs Ray: pip install 'synopt[ray]'") from None
        self.ray = ray
        if address == "local":
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        else:
            ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
        self.threads = threads
        self.remote = ray.remote(num_cpus=threads, max_retries=0)(run_one)

    def submit(self, fn: Callable, *args):
        return self.remote.remote(*args)

    def wait_any(self, handles: list) -> list:
        done, _ = self.ray.wait(handles, num_returns=1)
        return done

    def result(self, handle) -> dict:
        return self.ray.get(handle)

    def close(self) -> None:
        self.ray.shutdown()


# ---- the sweep --------------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    path: Path
    rows: list[dict]
    ran: list[str]
    skipped: list[str]
    failed: list[str]


def _finished(out: Path) -> dict | None:
    marker = out / "sweep.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def _reference(study: Study, records: dict[str, dict]) -> dict[str, Any]:
    """E_baseline per seed: the unpenalised direct net (000_*'s baseline, λ' = 0), else the conversion baseline."""
    per_seed: dict[int, dict] = {}
    for kind, pick in (("direct-unpenalised", lambda r: r["route"] == "direct" and r["method"] == "none"),
                       ("conversion-baseline", lambda r: r["method"] == "baseline")):
        for rec in sorted(records.values(), key=lambda r: r["run_id"]):
            for row in rec.get("rows", []):
                if pick(row) and row["seed"] not in per_seed and row["e_snn_j"]:
                    per_seed[row["seed"]] = {"run": row["run"], "e_snn_j": row["e_snn_j"], "kind": kind}
    if not per_seed:
        return {"run": None, "e_snn_j": None, "kind": None, "per_seed": {}}
    first = per_seed[min(per_seed)]
    return {**first, "per_seed": {str(k): v for k, v in sorted(per_seed.items())}}


def _rows(path: Path, spec: RunSpec, rec: dict, energy_model: str) -> list[dict]:
    """The rows of an ended run, read again from its folder (so a newer synopt re-derives them alike)."""
    try:
        rows = rows_from_run(path / "runs" / spec.run_id, energy_model, base=path)
    except (OSError, ValueError, KeyError):
        return rec["rows"]
    for row in rows:
        row["wall_time_s"] = rec.get("wall_time_s")
    return rows


def write_results(path: Path, study: Study, plan: list[RunSpec], records: dict[str, dict],
                  rederive: bool = True) -> list[dict]:
    """Rows of every ended run, energies relative to the per-seed reference; results.csv and results.json.

    ``rederive``: read the rows again from the run folders (the final table); else use those the runs recorded."""
    ref = _reference(study, records)
    rows = []
    for spec in plan:
        rec = records.get(spec.run_id)
        if rec is None:
            continue
        if rec["status"] != "ok":
            rows.append(failed_row(spec.run_id, spec.kind, spec.seed, rec["error"], f"runs/{spec.run_id}",
                                   rec.get("wall_time_s")))
            continue
        seed_ref = ref["per_seed"].get(str(spec.seed), {}).get("e_snn_j")
        for row in (_rows(path, spec, rec, study.energy_model) if rederive else rec["rows"]):
            row = dict(row)
            row["energy_rel"] = (row["e_snn_j"] / seed_ref if seed_ref and row["e_snn_j"] is not None
                                 else math.nan)
            rows.append(row)
    write_json(path / "results.json", {"study": study.to_dict(), "reference": ref, "rows": rows})
    write_text(path / "results.csv", to_csv(rows))
    return rows


def _check_sweep_folder(path: Path, study) -> None:
    """A sweep folder holds one study (its grid may grow between invocations): refuse a file, a non-empty folder that
    is no sweep, or a sweep of another study (name, model or dataset)."""
    if path.exists() and not path.is_dir():
        raise SweepError(f"--out {path} is a file, not a folder; choose a new --out")
    recorded = path / "study.json"
    if recorded.is_file():
        try:
            old = json.loads(recorded.read_text())["study"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SweepError(f"{recorded} is unreadable; choose a new --out or delete the folder") from None
        differs = [k for k in ("name", "model", "dataset") if old.get(k) != getattr(study, k)]
        if differs:
            which = ", ".join(f"{k} {old.get(k)!r}" for k in differs)
            raise SweepError(f"--out {path} holds the sweep of another study ({which}); choose a new --out")
    elif path.is_dir() and any(path.iterdir()):
        raise SweepError(f"--out {path} is not empty and holds no sweep (no study.json); choose a new or empty folder")


def sweep(study_file: str | Path, out: str | Path | None = None, workers: int | None = None,
          ray_address: str | None = None, data_root: str | None = None, retry_failed: bool = True,
          progress: bool = True, only: Callable[[RunSpec], bool] | None = None) -> SweepResult:
    """Run (or resume) every run of a study; return the results table rows."""
    study = load_study(study_file, data_root)
    plan = expand(study)
    if only is not None:
        plan = [s for s in plan if only(s) or any(only(t) and t.needs == s.run_id for t in plan)]
    path = Path(out or Path("runs") / "sweeps" / study.name)
    _check_sweep_folder(path, study)
    runs = path / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    write_json(path / "study.json", {"study": study.to_dict(), "plan": [s.to_dict() for s in plan]})
    records: dict[str, dict] = {}
    todo: list[RunSpec] = []
    for spec in plan:
        rec = _finished(runs / spec.run_id)
        if rec and rec["spec"]["params"] != _jsonable(spec.params):
            raise SweepError(f"{runs / spec.run_id} was run with other parameters than the study now asks for; "
                             f"use a new sweep folder (--out) or delete that run folder")
        if rec and (rec["status"] == "ok" or not retry_failed):
            records[spec.run_id] = rec
        else:
            todo.append(spec)
    skipped = list(records)
    n_workers = max(1, int(workers or study.workers or os.cpu_count() or 1))
    n_workers = min(n_workers, max(1, len(todo)))
    if ray_address:
        ex = _Ray(ray_address, study.threads_per_worker, workers)
    elif n_workers == 1:
        ex = _Inline()
    else:
        ex = _Pool(n_workers)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan), initial=len(skipped), desc=f"sweep {study.name}", disable=not progress,
               unit="run")
    ran, failed = [], [s for s, r in records.items() if r["status"] != "ok"]
    running: dict[Any, RunSpec] = {}
    limit = math.inf if ray_address else n_workers  # Ray places tasks by their num_cpus itself
    try:
        while todo or running:
            for spec in list(todo):
                if len(running) >= limit:
                    break
                dep = records.get(spec.needs) if spec.needs else {"status": "ok"}
                if spec.needs and dep is None:
                    continue
                todo.remove(spec)
                if dep["status"] != "ok":
                    rec = {"run_id": spec.run_id, "status": "failed", "wall_time_s": 0.0, "rows": [],
                           "error": f"needs {spec.needs}, which failed", "spec": spec.to_dict()}
                    write_json(runs / spec.run_id / "sweep.json", rec)
                    records[spec.run_id] = rec
                    failed.append(spec.run_id)
                    bar.update(1)
                    continue
                handle = ex.submit(run_one, _jsonable(spec.to_dict()), str(path.resolve()), study.threads_per_worker,
                                   study.energy_model)
                running[handle] = spec
            if not running:
                if todo:  # only runs whose dependency is missing from the plan
                    raise SweepError(f"runs {[s.run_id for s in todo]} wait for runs that are not in the plan")
                break
            for handle in ex.wait_any(list(running)):
                spec = running.pop(handle)
                rec = ex.result(handle)
                records[spec.run_id] = rec
                (ran if rec["status"] == "ok" else failed).append(spec.run_id)
                bar.update(1)
                bar.set_postfix_str(f"{spec.run_id}: {rec['status']}")
                write_results(path, study, plan, records, rederive=False)
    finally:
        bar.close()
        ex.close()
    rows = write_results(path, study, plan, records)
    return SweepResult(path, rows, ran, skipped, failed)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
