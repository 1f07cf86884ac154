"""Rebuild a converted network from a run folder's ``snn/`` and simulate it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from synopt import data
from synopt.convert.source import ModelSource, load_model
from synopt.convert.to_sinabs import SpikingNetwork, to_sinabs
from synopt.runs import load_checkpoint
from synopt.simulate.run import SimResult, simulate


def load_snn(snn_dir: str | Path, bias_timing: str | None = None) -> tuple[SpikingNetwork, dict]:
    """The spiking network of ``RUN/snn`` (spec.json + weights.pt) and its spec; ``bias_timing`` overrides the
    recorded one (``convert/bias_timing.py``)."""
    from synopt.graph import BoundedReLUReplacedWarning, MaxPoolReplacedWarning, prepare

    snn_dir = Path(snn_dir)
    spec_path = snn_dir / "spec.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} not found: pass the snn folder of a `synopt convert` run (RUN_DIR/snn)")
    spec = json.loads(spec_path.read_text())
    if spec.get("route") == "direct":  # a single-step SNN of `synopt finetune --direct`
        from synopt.finetune.direct import load_snn as load_direct

        return load_direct(snn_dir)
    model, _, _ = load_model(_in_run_folder(ModelSource(**spec["source"]), snn_dir.parent))
    options = spec.get("prepare") or {"fold_bn": True, "maxpool": "avg", "softmax": "remove", "bias": "keep"}
    with warnings.catch_warnings():  # the conversion already noted what preparation replaced
        warnings.simplefilter("ignore", MaxPoolReplacedWarning)
        warnings.simplefilter("ignore", BoundedReLUReplacedWarning)
        net, _ = prepare(model, **options)
    net.load_state_dict(load_checkpoint(snn_dir / "weights.pt")["state_dict"])
    snn = to_sinabs(net, encoding=spec["encoding"], single_spike=spec.get("single_spike", False),
                    min_v_mem=spec.get("min_v_mem"), init_v_fraction=spec.get("init_v_fraction", 0.0),
                    bias_timing=bias_timing or spec.get("bias_timing", "spread"))
    return snn, spec


def _in_run_folder(source: ModelSource, run_dir: Path) -> ModelSource:
    """The source with its files taken from ``run_dir/source`` (where the conversion copied them), so a run folder
    works from any working directory and after it was moved."""
    for key in ("onnx", "checkpoint"):
        recorded = getattr(source, key)
        if recorded:
            copy = run_dir / "source" / Path(recorded).name
            if copy.is_file():
                setattr(source, key, str(copy))
    return source


def simulate_run(snn_dir: str | Path, timesteps: int = 10, data_root: str | None = None, samples: int | None = None,
                 encoding: str | None = None, bias_timing: str | None = None, progress: bool = True) -> SimResult:
    snn, spec = load_snn(snn_dir, bias_timing)
    config = json.loads((Path(snn_dir).parent / "config.json").read_text()).get("config", {}) \
        if (Path(snn_dir).parent / "config.json").exists() else {}
    root = data_root or config.get("data_root")
    splits = data.load(spec["dataset"], root)
    if splits.is_event:
        frames = config.get("frames") or {"n_time_bins": timesteps}
        splits = data.load(spec["dataset"], root, representation="frames", **frames)
    return simulate(snn, splits.test, timesteps, tuple(spec["input_shape"]), encoding=encoding, samples=samples,
                    progress=progress, collate_fn=splits.collate_fn)
