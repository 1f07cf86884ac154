"""Registry of named datasets, the data-root rule, deterministic splits and the `load` entry point."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from .errors import DatasetError

__all__ = [
    "ENV_DATA_ROOT",
    "DatasetSplits",
    "DatasetInfo",
    "register",
    "load",
    "list_datasets",
    "check_name",
    "resolve_root",
    "split_indices",
]

ENV_DATA_ROOT = "SYNOPT_DATA_ROOT"

MATERIALIZE_HINT = "for the project's test data run python ../shared/data/materialize.py ROOT"


@dataclass
class DatasetSplits:
    """The three splits of one dataset and what a model needs to know about it.

    ``train``/``val``/``test`` are torch Datasets yielding ``(x, label)`` with ``label`` an ``int``.
    ``x`` is a float32 tensor of shape ``input_shape`` (C, H, W), or ``[T, C, H, W]`` when
    ``representation == 'frames'`` (event datasets only; T may vary per sample unless framed by time bins,
    then batch with ``collate_fn``).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    sensor_size: Optional[tuple[int, int, int]] = None  # (W, H, P) for event datasets
    representation: str = "image"  # 'image' or 'frames'
    classes: Optional[list[str]] = None
    mean: Optional[tuple[float, ...]] = None  # per-channel statistics of the [0, 1] data (static sets)
    std: Optional[tuple[float, ...]] = None
    normalized: bool = False  # True if (x - mean) / std was applied
    collate_fn: Optional[Callable] = None  # for DataLoader when frame counts vary between samples
    root: Optional[Path] = None
    info: dict = field(default_factory=dict)  # options the splits were built with

    @property
    def is_event(self) -> bool:
        return self.sensor_size is not None

    def __repr__(self) -> str:  # short: never print whole datasets
        return (
            f"DatasetSplits(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, num_classes={self.num_classes}, input_shape={self.input_shape}, "
            f"representation={self.representation!r}, sensor_size={self.sensor_size})"
        )


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    loader: Callable[..., DatasetSplits]
    needs_root: bool = True
    aliases: tuple[str, ...] = ()


_REGISTRY: dict[str, DatasetInfo] = {}


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def register(name: str, description: str, *, needs_root: bool = True, aliases: Sequence[str] = ()):
    """Decorator registering ``loader(root, *, split_seed, augment, download, **opts) -> DatasetSplits``."""

    def deco(fn):
        info = DatasetInfo(name, description, fn, needs_root, tuple(aliases))
        _REGISTRY[name] = info
        return fn

    return deco


def _ensure_builtin() -> None:
    # Importing the modules registers the built-in datasets (idempotent).
    from . import static, events  # noqa: F401


def list_datasets() -> dict[str, str]:
    """``{name: one-line description}`` of every registered dataset."""
    _ensure_builtin()
    return {name: info.description for name, info in _REGISTRY.items()}


def check_name(name: str) -> None:
    """Raise :class:`DatasetError` naming the valid datasets unless ``name`` is one of them (or an alias)."""
    _lookup(name)


def _lookup(name: str) -> DatasetInfo:
    _ensure_builtin()
    k = _key(name)
    for info in _REGISTRY.values():
        if k == _key(info.name) or k in {_key(a) for a in info.aliases}:
            return info
    valid = ", ".join(_REGISTRY)
    raise DatasetError(f"unknown dataset {name!r}; valid names: {valid}")


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$SYNOPT_DATA_ROOT``, else a :class:`DatasetError`.

    Existence is not checked here (``load`` does that, with the dataset's expected layout in the message).
    """
    if root is None or str(root) == "":
        env = os.environ.get(ENV_DATA_ROOT, "")
        if not env:
            raise DatasetError(
                f"no data root given: pass --data-root or set {ENV_DATA_ROOT}; {MATERIALIZE_HINT}"
            )
        root = env
    return Path(root).expanduser()


def split_indices(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index split of ``range(n)``: a seeded permutation, first ``n - n_val`` train.

    Both index arrays are returned sorted, so reading order follows the files on disk.
    """
    if not 0 <= n_val < n:
        raise DatasetError(f"validation size {n_val} is not in [0, {n}) for a training set of {n} samples")
    perm = np.random.default_rng(int(seed)).permutation(n)
    return np.sort(perm[: n - n_val]), np.sort(perm[n - n_val:])


def val_count(n: int, val_size: int | float | None, default_fraction: float = 0.1) -> int:
    """Number of validation samples: an int count, a float fraction of ``n`` or ``None`` (10 %)."""
    if val_size is None:
        val_size = default_fraction
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise DatasetError(f"val_size fraction must be in [0, 1), got {val_size}")
        return int(round(n * val_size))
    return int(val_size)


def load(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    split_seed: int = 0,
    augment: bool | str = False,
    download: bool = False,
    **opts: Any,
) -> DatasetSplits:
    """Load a registered dataset as train/val/test splits.

    ``root`` (else ``$SYNOPT_DATA_ROOT``) is the data root; datasets that need none (``digits``) ignore it.
    Nothing is downloaded unless ``download=True``. ``augment`` applies to the train split only: ``True`` is
    the dataset's default augmentation, a string such as ``'crop+flip+randaugment'`` picks the parts.
    Dataset-specific options go in ``opts`` (see ``docs/data.md``). Every failure is a :class:`DatasetError`.
    """
    info = _lookup(name)
    accepted = [
        p.name
        for p in inspect.signature(info.loader).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name not in ("split_seed", "augment", "download")
    ]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise DatasetError(
            f"unknown option(s) {', '.join(unknown)} for dataset {info.name!r}; accepted: "
            f"{', '.join(accepted) or '(none)'}"
        )
    if info.needs_root:
        path = resolve_root(root)
        if not path.is_dir():
            if download:
                path.mkdir(parents=True, exist_ok=True)
            else:
                raise DatasetError(
                    f"data root {path} does not exist or is not a directory; pass --data-root or set "
                    f"{ENV_DATA_ROOT} to an existing folder ({MATERIALIZE_HINT}), or pass download=True"
                )
    else:
        path = None
    return info.loader(path, split_seed=split_seed, augment=augment, download=download, **opts)
