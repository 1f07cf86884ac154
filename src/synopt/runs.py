"""Run folders: the exact configuration, metrics and checkpoints of one job, written atomically."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

import synopt


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder and rename it: never half a file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are as readable as any other file
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
    """A run folder: ``config.json`` (re-runnable), ``metrics.json``, ``checkpoints/``, tables and plots.

    A folder that already holds a run is resumed only when its recorded configuration equals ``config`` (the keys in
    ``ignore`` aside); otherwise it is refused with the differing keys named, so a run never continues from another
    run's checkpoints.
    """

    def __init__(self, path: str | Path, config: dict, ignore: tuple[str, ...] = ()):
        self.path = Path(path)
        self.config = _normalise(config)
        self.ignore = tuple(ignore)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} is a file, not a run folder; choose a new --out")
        existing = self.path / "config.json"
        self._previous_config = None  # the configuration of the run this one resumes
        if existing.exists():
            try:
                old = json.loads(existing.read_text()).get("config")
            except (OSError, ValueError, AttributeError):
                old = None
            if not _same_config(old, self.config, self.ignore):
                raise FileExistsError(
                    f"{self.path} already holds a run with another configuration ({_differences(old, self.config)});"
                    " choose a new --out, or delete the folder to start over")
            self._previous_config = old
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        write_json(existing, {"config": self.config, "environment": environment()})

    def previous_metrics(self) -> dict | None:
        """``metrics.json`` left by the run this one resumes (same configuration, ``ignore`` aside), else None; read
        it before this run writes its own."""
        if self._previous_config is None:
            return None
        try:
            return json.loads((self.path / "metrics.json").read_text())
        except (OSError, ValueError):
            return None

    def file(self, name: str) -> Path:
        return self.path / name

    def write_metrics(self, metrics: dict) -> Path:
        return write_json(self.path / "metrics.json", metrics)


@contextlib.contextmanager
def removed_on_early_failure(path: str | Path) -> Iterator[None]:
    """Remove the run folder ``path`` if the work inside fails before it wrote anything worth resuming (a checkpoint
    under checkpoints/ or points/, or metrics.json) and the folder did not exist before: a failed start leaves
    nothing half-written that would block the corrected command."""
    path = Path(path)
    created = not path.exists()
    try:
        yield
    except BaseException:
        progress = (path / "metrics.json").exists() or any(path.glob("checkpoints/**/*.pt")) or \
            any(path.glob("points/*.pt"))
        if created and not progress:
            shutil.rmtree(path, ignore_errors=True)
        raise


def cleans_up_early_failures(fn: Callable) -> Callable:
    """Decorator for functions with an ``out`` run-folder argument: :func:`removed_on_early_failure` around them."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with removed_on_early_failure(signature.bind(*args, **kwargs).arguments["out"]):
            return fn(*args, **kwargs)
    return wrapper


def check_out_folder(path: str | Path) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that is not a synopt run folder (no config.json):
    a run never writes its files between someone else's."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder; choose a new --out")
    if path.is_dir() and not (path / "config.json").exists():
        others = sorted(p.name for p in path.iterdir())
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise FileExistsError(f"--out {path} is not empty ({shown}) and holds no synopt run; choose a new or "
                                  "empty folder")


def _differences(old: Any, new: dict, limit: int = 3) -> str:
    """The keys where a recorded configuration differs from ``new``, for messages."""
    if not isinstance(old, dict):
        return "its config.json is unreadable"
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    shown = []
    for k in keys[:limit]:
        a, b = old.get(k), new.get(k)
        short = all(len(json.dumps(v, default=str)) <= 40 for v in (a, b))
        shown.append(f"{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}" if short else k)
    return "differs in " + "; ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


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
