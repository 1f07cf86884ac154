"""Run folders: the exact configuration, metrics and checkpoints of one job, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

import synopt


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder and rename it: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically, so a killed job never leaves half a file."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n"
    return write_text(path, text)


def write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """torch.save atomically; payload must hold only tensors and plain Python values (weights_only loadable)."""
    return _atomic(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely (``weights_only=True``); a state_dict alone is accepted too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a user-facing file problem
        raise ValueError(f"{path} is not a loadable weights-only torch checkpoint ({type(exc).__name__}: {exc}); "
                         "save it with torch.save(model.state_dict(), path)") from exc
    if isinstance(obj, dict) and "state_dict" not in obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = {"state_dict": obj}
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise ValueError(f"{path} holds no state_dict")
    return obj


def state_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names and values): tells whether a resumed run starts from the same net."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()


def environment() -> dict:
    return {
        "synopt": synopt.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


class RunDir:
    """A run folder: ``config.json`` (re-runnable), ``metrics.json``, ``checkpoints/``, tables and plots."""

    def __init__(self, path: str | Path, config: dict, resume: bool = False):
        self.path = Path(path)
        self.config = _normalise(config)
        existing = self.path / "config.json"
        self._previous_config = None  # the configuration of the run this one resumes (resume=True)
        if existing.exists() and not resume:
            old = json.loads(existing.read_text())
            if not _same_config(old.get("config"), self.config):
                raise FileExistsError(
                    f"{self.path} already holds a run with another configuration; choose a new --out "
                    "or delete the folder")
        elif existing.exists():
            try:
                self._previous_config = json.loads(existing.read_text()).get("config")
            except (OSError, ValueError, AttributeError):
                pass
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        write_json(existing, {"config": self.config, "environment": environment()})

    def previous_metrics(self, ignore: tuple[str, ...] = ()) -> dict | None:
        """``metrics.json`` left by the run this one resumes if it was made with the same configuration (the keys
        in ``ignore`` aside), else None; read it before this run writes its own."""
        if not _same_config(self._previous_config, self.config, ignore):
            return None
        try:
            return json.loads((self.path / "metrics.json").read_text())
        except (OSError, ValueError):
            return None

    def file(self, name: str) -> Path:
        return self.path / name

    def write_metrics(self, metrics: dict) -> Path:
        return write_json(self.path / "metrics.json", metrics)


def _same_config(old: Any, new: dict, ignore: tuple[str, ...] = ()) -> bool:
    """Whether a recorded configuration equals the normalised ``new`` one, the keys in ``ignore`` aside."""
    if not isinstance(old, dict):
        return False
    return {k: v for k, v in old.items() if k not in ignore} == {k: v for k, v in new.items() if k not in ignore}


def _normalise(config: dict) -> dict:
    return json.loads(json.dumps(config, default=_jsonable))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "__dict__"):
        return vars(obj)
    return str(obj)
