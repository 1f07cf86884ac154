"""Study files: one model, one dataset, one training budget and a grid of methods, expanded into run specs.

A study is a YAML or TOML file (see docs/sweeps.md and studies/)::

    name = "cnn7-fmnist"
    model = "cnn7"
    dataset = "fashion-mnist"
    seeds = [0, 1]
    [budget]                      # shared by every run of every route
    train_samples = 12000
    epochs = 4
    [ann]                         # the ReLU ANN, trained once per seed (when this table is given or a conversion
                                  # method needs it): conversion source and accuracy reference
    lr = 1e-3
    [[methods]]                   # list-valued keys are grid axes
    route = "direct"
    penalty = ["syn", "total", "balance"]
    p = [1, 2]
    lambda_norm = [0, 16, 64]     # 0 = the unpenalised reference (one run per seed and surrogate)
    [[methods]]
    route = "conversion"
    method = "qrelu"
    target_synops = 2e5
    schedule_points = 4           # halve the target 3 times, each point initialised from the previous one
    timesteps = [1, 10]           # one fine-tuning, simulated at each T (separate_timesteps = true: one run per T)
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: λ' of App. A.3 of 000_* (the default grid of a direct method)
PAPER_LAMBDAS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

TOP_KEYS = {"name", "model", "dataset", "data_root", "seeds", "budget", "ann", "methods", "workers",
            "threads_per_worker", "energy_model", "description"}
BUDGET_KEYS = {"train_samples", "epochs", "batch_size", "eval_samples", "lr", "weight_decay"}
ANN_KEYS = {"epochs", "lr", "batch_size", "weight_decay", "augment"}
DIRECT_KEYS = {"route", "penalty", "p", "lambda_norm", "surrogate", "alpha", "tau", "epochs", "lr", "weight_decay",
               "bn_decay", "optimizer", "label_smoothing", "from_ann", "init_rate", "schedule"}
CONVERSION_KEYS = {"route", "method", "target_synops", "target_fraction", "schedule_points", "timesteps", "epochs", "lr",
                   "weight_decay", "rho", "percentile", "calibrate", "single_spike", "init_v_fraction",
                   "bias_timing", "recalibrate_bn", "estimate_samples", "event_count", "n_time_bins",
                   "separate_timesteps"}
ROUTES = {"direct": DIRECT_KEYS, "conversion": CONVERSION_KEYS}


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: ``kind`` (ann | direct | conversion), its folder name and its keyword arguments."""

    run_id: str
    kind: str
    seed: int
    params: dict[str, Any] = field(hash=False)
    needs: str | None = None  # run_id of the ANN run this run starts from

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "kind": self.kind, "seed": self.seed, "params": self.params,
                "needs": self.needs}


@dataclass
class Study:
    name: str
    model: str
    dataset: str
    data_root: str | None
    seeds: list[int]
    budget: dict[str, Any]
    ann: dict[str, Any]
    methods: list[dict[str, Any]]
    workers: int | None = None
    threads_per_worker: int = 1
    energy_model: str = "cmos45nm"
    source: str | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            obj = yaml.safe_load(text)
            return obj if obj is not None else {}
        if path.suffix == ".json":
            return json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parser error is a user-facing file problem
        raise StudyError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    raise StudyError(f"{path}: unknown study format {path.suffix!r}; use .toml, .yaml/.yml or .json")


def _check_keys(where: str, obj: Any, allowed: set[str]) -> dict:
    if not isinstance(obj, dict):
        raise StudyError(f"{where} must be a table/mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return obj


def _int(lo: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo, f"an integer >= {lo}"


def _real(test, rule: str):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and test(v), rule


def _value_rules() -> dict:
    from synopt.convert.bias_timing import BIAS_TIMINGS
    from synopt.finetune.neuron import SURROGATES
    from synopt.finetune.penalty import PENALTY_KINDS

    def choice(options):
        return lambda v: v in options, "one of " + ", ".join(map(str, options))

    positive, nonneg = _real(lambda v: v > 0, "a positive number"), _real(lambda v: v >= 0, "a number >= 0")
    boolean = (lambda v: isinstance(v, bool), "true or false")
    return {
        **{k: _int(1) for k in ("epochs", "batch_size", "train_samples", "eval_samples", "schedule_points",
                                "estimate_samples", "event_count", "n_time_bins", "timesteps", "workers",
                                "threads_per_worker")},
        "recalibrate_bn": _int(0), "lr": positive, "target_synops": positive, "rho": positive, "alpha": positive,
        "tau": positive, "weight_decay": nonneg, "lambda_norm": nonneg, "label_smoothing": nonneg,
        "init_v_fraction": nonneg, "p": _real(lambda v: v >= 1, "a number >= 1"),
        "percentile": _real(lambda v: 0 < v <= 100, "a number in (0, 100]"),
        "target_fraction": _real(lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "init_rate": _real(lambda v: 0 < v < 1, "a number in (0, 1)"),
        "penalty": choice((*PENALTY_KINDS, "none")), "surrogate": choice(tuple(SURROGATES)),
        "bias_timing": choice(BIAS_TIMINGS), "optimizer": choice(("adam", "sgd")),
        "schedule": choice(("linear", "constant")), "calibrate": boolean, "single_spike": boolean,
        "bn_decay": boolean, "separate_timesteps": boolean,
    }


def _check_values(where: str, table: dict, rules: dict) -> None:
    """Every value of a study table (each element of a grid axis) has the type and range its key needs."""
    for key, value in table.items():
        if key not in rules:
            continue
        if isinstance(value, list) and not value:
            raise StudyError(f"{where}: {key} is an empty list (a grid axis needs at least one value)")
        ok, rule = rules[key]
        for v in value if isinstance(value, list) else [value]:
            if not ok(v):
                raise StudyError(f"{where}: {key} must be {rule}, got {v!r}")


def load_study(path: str | Path, data_root: str | None = None) -> Study:
    """Read and validate a study file (``data_root`` overrides the file's)."""
    path = Path(path)
    raw = _check_keys(str(path), _read(path), TOP_KEYS)
    for key in ("model", "dataset", "methods"):
        if key not in raw:
            raise StudyError(f"{path}: missing required key {key!r}")
    seeds = raw.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise StudyError(f"{path}: seeds must be an integer or a list of integers, got {seeds!r}")
    methods = raw["methods"]
    if not isinstance(methods, list) or not methods:
        raise StudyError(f"{path}: methods must be a non-empty list of tables ([[methods]] in TOML)")
    for i, m in enumerate(methods):
        where = f"{path}: methods[{i}]"
        route = m.get("route") if isinstance(m, dict) else None
        if route not in ROUTES:
            raise StudyError(f"{where}: route must be 'direct' or 'conversion', got {route!r}")
        _check_keys(where, m, ROUTES[route])
        if route == "conversion":
            method = m.get("method", "qrelu")
            if method not in ("qrelu", "rho", "scale"):
                raise StudyError(f"{where}: method must be qrelu, rho or scale, got {method!r}")
            if method == "qrelu" and ("target_synops" in m) == ("target_fraction" in m):
                raise StudyError(f"{where}: a qrelu conversion needs one of target_synops (SynOps, a number or a "
                                 f"list) or target_fraction (e.g. 0.5: half the SynOps at the chosen rho)")
    from synopt import data, zoo

    try:
        zoo.get_spec(raw["model"])
    except Exception as exc:  # noqa: BLE001
        raise StudyError(f"{path}: {exc}") from exc
    try:
        data.check_name(raw["dataset"])
    except data.DatasetError as exc:
        raise StudyError(f"{path}: {exc}") from None
    rules = _value_rules()
    _check_values(str(path), raw, rules)
    for name in ("budget", "ann"):
        _check_values(f"{path}: {name}", raw.get(name) or {}, rules)
    for i, m in enumerate(methods):
        _check_values(f"{path}: methods[{i}]", m, rules)
    return Study(name=str(raw.get("name", path.stem)), model=raw["model"], dataset=raw["dataset"],
                 data_root=data_root or raw.get("data_root"), seeds=list(seeds),
                 budget=dict(_check_keys(f"{path}: budget", raw.get("budget", {}), BUDGET_KEYS)),
                 ann=dict(_check_keys(f"{path}: ann", raw.get("ann", {}), ANN_KEYS)), methods=methods,
                 workers=raw.get("workers"), threads_per_worker=int(raw.get("threads_per_worker", 1)),
                 energy_model=raw.get("energy_model", "cmos45nm"), source=str(path),
                 description=str(raw.get("description", "")))


def _grid(method: dict, defaults: dict | None = None) -> list[dict]:
    """Cartesian product over the list-valued keys of ``method`` (``defaults`` fill missing keys first)."""
    full = {**(defaults or {}), **method}
    keys = sorted(full)
    axes = [full[k] if isinstance(full[k], list) else [full[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def _num(x: float) -> str:
    return f"{x:g}".replace("+", "")


_DIRECT_TAGGED = {"route", "penalty", "p", "surrogate", "lambda_norm"}


def _direct_id(p: dict, seed: int, method: dict) -> str:
    """Run id of a direct run: penalty, p, surrogate, λ', then every other grid axis of its [[methods]] table
    (``-lr=0.01``), so runs that differ in them get their own folders."""
    sur = p.get("surrogate", "s2nn")
    extra = "".join(f"-{k}={_num(p[k]) if isinstance(p[k], float) else p[k]}"
                    for k in sorted(k for k, v in method.items() if isinstance(v, list) and k not in _DIRECT_TAGGED))
    if p["penalty"] == "none":
        return f"direct-none-{sur}{extra}-s{seed}"
    return f"direct-{p['penalty']}-p{_num(p['p'])}-{sur}-lam{_num(p['lambda_norm'])}{extra}-s{seed}"


def _add(runs: dict, spec: "RunSpec", study: "Study") -> None:
    """Add a run; one id with two different settings (two [[methods]] tables) is refused, never silently merged."""
    have = runs.setdefault(spec.run_id, spec)
    if have.params != spec.params or have.needs != spec.needs:
        raise StudyError(f"study {study.name!r}: two runs would share the folder {spec.run_id} with different "
                         "settings; make the differing key a list in one [[methods]] table (it then names the runs) "
                         "or merge the tables")


_TAGGED = {"route", "method", "target_synops", "target_fraction", "schedule_points", "rho", "percentile", "timesteps",
           "separate_timesteps"}
OPTION_DEFAULTS = {"single_spike": False, "init_v_fraction": 0.0, "bias_timing": "spread", "recalibrate_bn": 0}


def _options_tag(method: dict, p: dict) -> str:
    """Run-id suffix of a conversion run: every other grid axis of its [[methods]] table and every neuron or
    preparation option that differs from its default (``-bias_timing=signed``), so runs that differ in them get
    their own folders."""
    keys = sorted({k for k, v in method.items() if isinstance(v, list) and k not in _TAGGED}
                  | {k for k, d in OPTION_DEFAULTS.items() if p.get(k, d) != d})
    return "".join(f"-{k}={_num(p[k]) if isinstance(p[k], float) else p[k]}" for k in keys)


def expand(study: Study) -> list[RunSpec]:
    """Every run of the study, ANN runs first, without duplicates (λ' = 0 collapses to one unpenalised run)."""
    b = study.budget
    common = {"model": study.model, "dataset": study.dataset, "data_root": study.data_root}
    runs: dict[str, RunSpec] = {}
    need_ann = bool(study.ann) or any(m["route"] == "conversion" or "ann" in _as_list(m.get("from_ann"))
                                      for m in study.methods)
    for seed in study.seeds:
        ann_id = f"ann-s{seed}"
        if need_ann:
            runs[ann_id] = RunSpec(ann_id, "ann", seed, {
                **common, "epochs": study.ann.get("epochs", b.get("epochs", 5)),
                "lr": study.ann.get("lr", b.get("lr", 1e-3)),
                "batch_size": study.ann.get("batch_size", b.get("batch_size", 64)),
                "weight_decay": study.ann.get("weight_decay", b.get("weight_decay", 0.0)),
                "train_samples": b.get("train_samples"), "seed": seed,
                **({"augment": study.ann["augment"]} if "augment" in study.ann else {})})
        for m in study.methods:
            if m["route"] == "direct":
                for p in _grid(m, {"penalty": "syn", "p": 1, "lambda_norm": list(PAPER_LAMBDAS),
                                   "surrogate": "s2nn"}):
                    p.pop("route")
                    if not p["lambda_norm"] or p["penalty"] == "none":
                        p.update(penalty="none", p=1, lambda_norm=0.0)
                    for key in ("epochs", "lr", "weight_decay"):
                        p.setdefault(key, b.get(key))
                    params = {**common, **p, "seed": seed, "batch_size": b.get("batch_size"),
                              "train_samples": b.get("train_samples"), "eval_samples": b.get("eval_samples"),
                              "energy_model": study.energy_model}
                    if p.get("from_ann") == "ann":  # start from this study's ANN of the same seed
                        params["from_ann"] = None
                        spec = RunSpec(_direct_id(p, seed, m) + "-ft", "direct", seed, params, needs=ann_id)
                    else:
                        spec = RunSpec(_direct_id(p, seed, m), "direct", seed, params)
                    _add(runs, spec, study)
            else:
                m = dict(m)
                steps = m.pop("timesteps", 10)
                steps = sorted(set(steps)) if isinstance(steps, list) else [steps]
                shared = not m.pop("separate_timesteps", False)  # one QAT, simulated at every T (static data)
                for p in _grid({**m, "timesteps": [max(steps)] if shared else steps}, {"method": "qrelu"}):
                    p.pop("route")
                    if shared and len(steps) > 1:
                        p["extra_timesteps"] = [t for t in steps if t != p["timesteps"]]
                    method = p["method"]
                    tag = {"qrelu": lambda: (f"t{_num(p['target_synops'])}" if "target_synops" in p else
                                             f"f{_num(p['target_fraction'])}") + f"x{p.get('schedule_points', 1)}",
                           "rho": lambda: f"rho{_num(p['rho'])}" if "rho" in p else "rhogrid",
                           "scale": lambda: f"p{_num(p.get('percentile', 99.9))}"}[method]()
                    p.setdefault("epochs", b.get("epochs", 5))
                    if b.get("lr") is not None:
                        p.setdefault("lr", b["lr"])
                    params = {**common, **p, "seed": seed, "batch_size": b.get("batch_size", 64),
                              "train_samples": b.get("train_samples"), "eval_samples": b.get("eval_samples")}
                    ts = "-".join(str(t) for t in sorted([p["timesteps"], *p.get("extra_timesteps", [])]))
                    run_id = f"conv-{method}-{tag}-T{ts}{_options_tag(m, p)}-s{seed}"
                    _add(runs, RunSpec(run_id, "conversion", seed, params, needs=ann_id), study)
    return sorted(runs.values(), key=lambda r: (r.kind != "ann", r.run_id))
