"""Event-camera data: reading single recordings, event -> tensor representations, and the N-MNIST dataset.

Events are numpy structured arrays with fields ``x``, ``y`` (pixel), ``t`` (microseconds, non-decreasing) and
``p`` (polarity 0/1); see :data:`EVENT_DTYPE`. Sensor sizes are ``(W, H, P)`` as in tonic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError
from .registry import DatasetSplits, register, split_indices, val_count

__all__ = [
    "EVENT_DTYPE",
    "EVENT_SUFFIXES",
    "read_events",
    "events_to_frames",
    "events_to_image",
    "collate_frames",
    "EventFolderDataset",
    "NMNIST_SENSOR_SIZE",
    "EVENT_AUGMENTATIONS",
    "event_augmentation",
    "augmentation_parts",
    "shift_events",
]

EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
NMNIST_SENSOR_SIZE = (34, 34, 2)

EVENT_SUFFIXES = {
    ".aedat4": "AEDAT 4 (iniVation DV; needs the `aedat` package)",
    ".raw": "Prophesee EVT2/EVT3 (needs `expelliarmus`)",
    ".dat": "Prophesee/ATIS DAT (needs `expelliarmus`)",
    ".bin": "N-MNIST / N-Caltech101 binary, 5 bytes per event, 34x34x2",
}

# Prophesee sensor geometry by HAL plugin, used when a .raw header has no geometry line.
_PLUGIN_GEOMETRY = [
    ("gen41", (1280, 720)),
    ("gen4", (1280, 720)),
    ("imx636", (1280, 720)),
    ("imx8", (320, 320)),
    ("genx320", (320, 320)),
    ("gen31", (640, 480)),
    ("gen3", (640, 480)),
]


def _to_event_array(x, y, t, p) -> np.ndarray:
    ev = np.empty(len(t), dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    return ev


def _sorted_by_time(ev: np.ndarray) -> np.ndarray:
    t = ev["t"]
    if len(t) > 1 and np.any(t[1:] < t[:-1]):
        ev = ev[np.argsort(t, kind="stable")]
    return ev


# ------------------------------------------------------------------------------------------- readers


def _read_nmnist_bin(path: Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    import tonic.io

    size = path.stat().st_size
    if size % 5:
        raise DatasetError(
            f"{path} has {size} bytes, not a multiple of 5 (N-MNIST .bin is 5 bytes per event): the file is "
            "truncated or not N-MNIST; delete it and materialize or download again"
        )
    try:
        ev = tonic.io.read_mnist_file(str(path), dtype=tonic.io.events_struct)
    except Exception as e:
        raise DatasetError(f"cannot decode N-MNIST file {path}: {type(e).__name__}: {e}") from None
    W, H, P = NMNIST_SENSOR_SIZE
    if len(ev) and (ev["x"].max() >= W or ev["y"].max() >= H or ev["x"].min() < 0):
        raise DatasetError(
            f"{path}: coordinates up to x={ev['x'].max()}, y={ev['y'].max()} do not fit the N-MNIST 34x34 sensor; "
            "not an N-MNIST file?"
        )
    return _to_event_array(ev["x"], ev["y"], ev["t"], ev["p"]), NMNIST_SENSOR_SIZE


def _call_rust(fn, what: Path):
    """Run a decoder from a Rust extension: their panics are BaseException, not Exception."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit, DatasetError):
        raise
    except BaseException as e:  # noqa: B036 (pyo3 PanicException)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"cannot decode {what}: {type(e).__name__}: {msg}; the file is corrupt or truncated") from None


def _read_aedat4(path: Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    try:
        import aedat
    except ImportError:
        raise DatasetError(f"reading {path} needs the `aedat` package: pip install aedat") from None

    def decode():
        decoder = aedat.Decoder(str(path))
        streams = {i: s for i, s in decoder.id_to_stream().items() if s.get("type") == "events"}
        if not streams:
            raise DatasetError(f"{path} contains no event stream (streams: {decoder.id_to_stream()})")
        sid = min(streams)
        chunks = [packet["events"] for packet in decoder if packet["stream_id"] == sid]
        return streams[sid], chunks

    stream, chunks = _call_rust(decode, path)
    ev = np.concatenate(chunks) if chunks else np.empty(0, dtype=[("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")])
    out = _to_event_array(ev["x"], ev["y"], ev["t"].astype(np.int64), ev["p"])
    W = int(stream.get("width") or (out["x"].max() + 1 if len(out) else 0))
    H = int(stream.get("height") or (out["y"].max() + 1 if len(out) else 0))
    return out, (W, H, 2)


def _prophesee_header(path: Path) -> list[str]:
    """The '%'-prefixed ASCII header lines at the start of a Prophesee .raw/.dat file."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    lines, pos = [], 0
    while head[pos:pos + 1] == b"%":
        end = head.find(b"\n", pos)
        if end < 0:
            break
        line = head[pos:end].decode("latin1").strip()
        lines.append(line)
        pos = end + 1
        if line == "% end":
            break
    return lines


def _header_geometry(lines: list[str]) -> Optional[tuple[int, int]]:
    text = "\n".join(lines)
    m = re.search(r"geometry\s+(\d+)\s*x\s*(\d+)", text, re.I)
    if m:
        return int(m.group(1)), int(m.group(2))
    w = re.search(r"width\s*[=\s]\s*(\d+)", text, re.I)
    h = re.search(r"height\s*[=\s]\s*(\d+)", text, re.I)
    if w and h:
        return int(w.group(1)), int(h.group(1))
    m = re.search(r"plugin_name\s+(\S+)", text)
    if m:
        for key, geom in _PLUGIN_GEOMETRY:
            if key in m.group(1).lower():
                return geom
    return None


def _raw_encoding(lines: list[str]) -> Optional[str]:
    text = "\n".join(lines).lower()
    m = re.search(r"%\s*evt\s+(\d)(?:\.(\d))?", text) or re.search(r"format\s+evt(\d)(\d)?", text)
    if not m:
        return None
    major, minor = m.group(1), m.group(2) or "0"
    if major == "2" and minor == "0":
        return "evt2"
    if major == "3":
        return "evt3"
    return f"evt{major}.{minor}"


def _read_prophesee(path: Path, encoding: Optional[str]) -> tuple[np.ndarray, tuple[int, int, int]]:
    try:
        from expelliarmus import Wizard
    except ImportError:
        raise DatasetError(f"reading {path} needs the `expelliarmus` package: pip install expelliarmus") from None
    lines = _prophesee_header(path)
    if encoding is None:
        if path.suffix.lower() == ".dat":
            encoding = "dat"
        else:
            encoding = _raw_encoding(lines)
            if encoding is None:
                raise DatasetError(
                    f"{path}: the header does not say whether it is EVT2 or EVT3 (no '% evt' / '% format' line); "
                    "pass encoding='evt2' or 'evt3' to read_events"
                )
    encoding = encoding.lower()
    if encoding not in ("evt2", "evt3", "dat"):
        raise DatasetError(f"{path}: encoding {encoding!r} is not supported (expelliarmus reads evt2, evt3 and dat)")
    arr = _call_rust(lambda: Wizard(encoding=encoding, fpath=str(path)).read(), path)
    if arr is None:  # expelliarmus prints "ERROR: ..." and returns None instead of raising
        raise DatasetError(f"expelliarmus could not decode {path} as {encoding.upper()}: the file is corrupt or truncated")
    ev = _to_event_array(arr["x"], arr["y"], arr["t"], arr["p"])
    geom = _header_geometry(lines)
    if len(ev):
        mx, my = int(ev["x"].max()) + 1, int(ev["y"].max()) + 1
        if geom is None or mx > geom[0] or my > geom[1]:
            geom = (max(mx, geom[0] if geom else 0), max(my, geom[1] if geom else 0))
    if geom is None:
        geom = (0, 0)
    return ev, (geom[0], geom[1], 2)


def read_events(path: str | os.PathLike, *, encoding: Optional[str] = None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Read one event recording: ``(events, (W, H, P))``; events sorted by time, fields x, y, t (us), p.

    The suffix picks the reader: ``.aedat4`` (aedat), ``.raw`` (Prophesee EVT2/EVT3 from the header, or
    ``encoding=``), ``.dat`` (Prophesee DAT), ``.bin`` (N-MNIST). Sensor size comes from the file's header
    (AEDAT4 stream, Prophesee geometry/plugin line), the format (N-MNIST 34x34), or else max coordinate + 1.
    Raises :class:`DatasetError` naming the file for a missing, corrupt or unsupported file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EVENT_SUFFIXES:
        supported = "; ".join(f"{s} {d}" for s, d in EVENT_SUFFIXES.items())
        raise DatasetError(f"unsupported event file suffix {path.suffix!r} for {path}; supported: {supported}")
    if not path.is_file():
        raise DatasetError(f"event file {path} does not exist")
    if suffix == ".bin":
        ev, sensor = _read_nmnist_bin(path)
    elif suffix == ".aedat4":
        ev, sensor = _read_aedat4(path)
    else:
        ev, sensor = _read_prophesee(path, encoding)
    return _sorted_by_time(ev), sensor


# -------------------------------------------------------------------------------- representations


def _frame_index(events: np.ndarray, n_time_bins, event_count, time_window, remainder) -> tuple[np.ndarray, int, int]:
    """Frame index of every kept event, number of frames, number of kept events (a prefix)."""
    n = len(events)
    given = sum(v is not None for v in (n_time_bins, event_count, time_window))
    if given != 1:
        raise DatasetError("give exactly one of n_time_bins, event_count, time_window")
    if remainder not in ("keep", "drop"):
        raise DatasetError(f"remainder must be 'keep' or 'drop', got {remainder!r}")
    if n_time_bins is not None:
        T = int(n_time_bins)
        if T < 1:
            raise DatasetError(f"n_time_bins must be >= 1, got {n_time_bins}")
        if n == 0:
            return np.zeros(0, np.int64), T, 0
        t = events["t"].astype(np.int64)
        t0 = t[0]
        span = int(t[-1] - t0) + 1
        return ((t - t0) * T) // span, T, n
    if event_count is not None:
        N = int(event_count)
        if N < 1:
            raise DatasetError(f"event_count must be >= 1, got {event_count}")
        if n == 0:
            return np.zeros(0, np.int64), 1, 0
        if remainder == "drop" and n >= N:
            n = (n // N) * N
        return np.arange(n, dtype=np.int64) // N, -(-n // N), n
    W = int(time_window)
    if W < 1:
        raise DatasetError(f"time_window must be >= 1 us, got {time_window}")
    if n == 0:
        return np.zeros(0, np.int64), 1, 0
    t = events["t"].astype(np.int64)
    b = (t - t[0]) // W
    K = int(b[-1]) + 1
    if remainder == "drop" and K > 1:
        full = int(t[-1] - t[0] + 1) // W  # windows that are entirely covered by the recording
        full = max(full, 1)
        k = np.searchsorted(b, full)
        return b[:k], full, int(k)
    return b, K, n


def events_to_frames(
    events: np.ndarray,
    sensor_size: Sequence[int],
    *,
    n_time_bins: Optional[int] = None,
    event_count: Optional[int] = None,
    time_window: Optional[int] = None,
    remainder: str = "keep",
    merge_polarities: bool = False,
) -> torch.Tensor:
    """Event counts per frame, pixel and channel: float32 ``[T, C, H, W]`` (C = 1 if merge_polarities else P).

    Events are taken in time order (sorted stably if they are not). Give exactly one of:

    * ``n_time_bins=T``: T equal-width bins spanning first..last timestamp; every event lands in a bin
      (tonic's ``ToFrame(n_time_bins=T)`` drops the events of the last ``span % T`` microseconds).
    * ``event_count=N``: consecutive frames of N events (Sorbaro et al.: 3,000). The last
      ``len(events) % N`` events form a shorter final frame with ``remainder='keep'`` (default; no event is
      lost) or are discarded with ``remainder='drop'`` (tonic's default). A recording with fewer than N events
      always gives one frame holding all its events.
    * ``time_window=us``: consecutive windows of that length from the first event; the last partial window is
      kept (``'keep'``) or discarded (``'drop'``, unless it is the only one).
    """
    W, H, P = (int(s) for s in sensor_size)
    C = 1 if merge_polarities else P
    events = _sorted_by_time(events)
    b, T, n = _frame_index(events, n_time_bins, event_count, time_window, remainder)
    ev = events[:n]
    if n:
        c = np.zeros(n, np.int64) if merge_polarities else ev["p"].astype(np.int64)
        x, y = ev["x"].astype(np.int64), ev["y"].astype(np.int64)
        if x.max() >= W or y.max() >= H or (not merge_polarities and c.max() >= P):
            raise DatasetError(
                f"events (x<={x.max()}, y<={y.max()}, p<={c.max()}) do not fit the sensor size {tuple(sensor_size)}"
            )
        flat = ((b * C + c) * H + y) * W + x
        counts = np.bincount(flat, minlength=T * C * H * W)
    else:
        counts = np.zeros(T * C * H * W, np.int64)
    return torch.from_numpy(counts.astype(np.float32)).view(T, C, H, W)


def events_to_image(events: np.ndarray, sensor_size: Sequence[int], *, merge_polarities: bool = False) -> torch.Tensor:
    """Time-collapsed image: event counts per channel and pixel, float32 ``[C, H, W]``
    (equals ``events_to_frames(...).sum(0)`` for any framing with ``remainder='keep'``)."""
    return events_to_frames(events, sensor_size, event_count=max(len(events), 1), merge_polarities=merge_polarities)[0]


EVENT_AUGMENTATIONS = ("prefix", "shift")


def event_augmentation(augment) -> Optional[str]:
    """The augmentation of an event dataset from ``load(augment=...)``: False/None/'' = none, True = 'prefix', else
    'prefix', 'shift' or both joined by '+' (returned in that order)."""
    if augment is None or augment is False or augment == "":
        return None
    if augment is True:
        return "prefix"
    parts = str(augment).split("+")
    if any(p not in EVENT_AUGMENTATIONS for p in parts):
        raise DatasetError(f"unknown augmentation {augment!r} for event datasets; use True or one of "
                           f"{', '.join(EVENT_AUGMENTATIONS)}, joined by '+' for both")
    return "+".join(a for a in EVENT_AUGMENTATIONS if a in parts)


def augmentation_parts(augment) -> set[str]:
    """The parts ('prefix', 'shift') of an event augmentation given as for ``event_augmentation``."""
    name = event_augmentation(augment)
    return set(name.split("+")) if name else set()


def shift_events(events: np.ndarray, dx: int, dy: int, sensor_size: Sequence[int]) -> np.ndarray:
    """The events translated by (dx, dy) pixels; those that leave the sensor are dropped (a new array)."""
    W, H = int(sensor_size[0]), int(sensor_size[1])
    x, y = events["x"].astype(np.int64) + dx, events["y"].astype(np.int64) + dy
    keep = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    out = events[keep]  # boolean indexing copies
    out["x"], out["y"] = x[keep], y[keep]
    return out


def collate_frames(batch):
    """DataLoader collate for ``[T_i, C, H, W]`` samples of different T: zero frames are appended up to the
    longest T in the batch. Returns ``(frames [B, T, C, H, W], labels [B], lengths [B])``."""
    xs, ys = zip(*batch)
    T = max(x.shape[0] for x in xs)
    out = xs[0].new_zeros((len(xs), T, *xs[0].shape[1:]))
    for i, x in enumerate(xs):
        out[i, : x.shape[0]] = x
    return out, torch.tensor(ys, dtype=torch.int64), torch.tensor([x.shape[0] for x in xs], dtype=torch.int64)


# ---------------------------------------------------------------------------------------------- dataset


class _EventCache:
    """Decoded recordings by path, filled lazily and shared by the splits that read the same files."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._store: dict[str, np.ndarray] = {}

    def get(self, path: Path) -> np.ndarray:
        key = str(path)
        ev = self._store.get(key)
        if ev is None:
            ev, _ = read_events(path)
            if self.enabled:
                self._store[key] = ev
        return ev

    def __len__(self) -> int:
        return len(self._store)


class EventFolderDataset(Dataset):
    """Event recordings (one file per sample) as frames ``[T, C, H, W]`` or a collapsed image ``[C, H, W]``.

    ``augment='prefix'`` (image representation only): each read collapses only the events of the first k of
    ``prefix_bins`` equal time bins of the recording, k uniform in 1..prefix_bins (torch's global RNG). A network
    trained so sees the partial images an SNN integrates while the recording streams in, not only the final one.
    ``augment='shift'`` (any representation): each read translates the recording by a random whole-pixel offset of
    up to ``shift_pixels`` in x and in y (events leaving the sensor are dropped), the standard remedy for
    over-fitting on small event datasets; ``'prefix+shift'`` does both.
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        sensor_size: tuple[int, int, int],
        *,
        representation: str = "image",
        n_time_bins: Optional[int] = None,
        event_count: Optional[int] = None,
        time_window: Optional[int] = None,
        remainder: str = "keep",
        merge_polarities: bool = False,
        first_saccade_only: bool = False,
        cache: Optional[_EventCache] = None,
        augment: Optional[str] = None,
        prefix_bins: int = 30,
        shift_pixels: int = 2,
    ):
        if representation not in ("frames", "image"):
            raise DatasetError(f"representation must be 'frames' or 'image', got {representation!r}")
        self.augment = event_augmentation(augment)
        parts = augmentation_parts(self.augment)
        self.prefix = "prefix" in parts
        if int(shift_pixels) < 0:
            raise DatasetError(f"shift_pixels must be >= 0, got {shift_pixels}")
        self.shift_pixels = int(shift_pixels) if "shift" in parts else 0
        if self.prefix and representation != "image":
            raise DatasetError("augment='prefix' makes time-collapsed images; use representation='image' with it")
        if int(prefix_bins) < 1:
            raise DatasetError(f"prefix_bins must be >= 1, got {prefix_bins}")
        self.prefix_bins = int(prefix_bins)
        if n_time_bins is None and event_count is None and time_window is None:
            n_time_bins = 10
        self.files = [Path(f) for f in files]
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.sensor_size = tuple(sensor_size)
        self.representation = representation
        self.framing = dict(n_time_bins=n_time_bins, event_count=event_count, time_window=time_window, remainder=remainder)
        _frame_index(np.empty(0, EVENT_DTYPE), **self.framing)  # validate options now
        self.merge_polarities = merge_polarities
        self.first_saccade_only = first_saccade_only
        self.cache = cache if cache is not None else _EventCache()

    def __len__(self) -> int:
        return len(self.files)

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def events(self, i: int) -> np.ndarray:
        """The raw (cached) events of sample ``i``, randomly shifted with ``augment`` 'shift'; do not modify in
        place."""
        ev = self.cache.get(self.files[i])
        if self.first_saccade_only:
            ev = ev[ev["t"] < 100_000]
        if self.shift_pixels:
            dx, dy = (int(v) for v in torch.randint(-self.shift_pixels, self.shift_pixels + 1, (2,)))
            ev = shift_events(ev, dx, dy, self.sensor_size)
        return ev

    def frames(self, i: int) -> torch.Tensor:
        return events_to_frames(self.events(i), self.sensor_size, merge_polarities=self.merge_polarities, **self.framing)

    def image(self, i: int) -> torch.Tensor:
        if self.prefix:
            return self.prefix_image(i, int(torch.randint(1, self.prefix_bins + 1, ())))
        if self.framing["remainder"] == "keep":
            return events_to_image(self.events(i), self.sensor_size, merge_polarities=self.merge_polarities)
        return self.frames(i).sum(0)

    def prefix_image(self, i: int, k: int) -> torch.Tensor:
        """The collapsed image of the events in the first ``k`` of ``prefix_bins`` equal time bins of sample i."""
        ev = self.events(i)
        b, _, _ = _frame_index(ev, self.prefix_bins, None, None, "keep")
        return events_to_image(ev[: int(np.searchsorted(b, k))], self.sensor_size,
                               merge_polarities=self.merge_polarities)

    def __getitem__(self, i: int):
        x = self.frames(i) if self.representation == "frames" else self.image(i)
        return x, int(self.labels[i])


# ------------------------------------------------------------------------------------------------ N-MNIST


def _scan_nmnist(folder: Path, root: Path) -> tuple[list[Path], list[int]]:
    hint = (
        f"expected {folder}/<label 0-9>/*.bin (N-MNIST's extracted layout). Run "
        f"`python ../shared/data/materialize.py {root}` (the project's test data) or pass download=True"
    )
    if not folder.is_dir():
        raise DatasetError(f"N-MNIST not found: {folder} does not exist ({hint})")
    files, labels, bad = [], [], []
    for d in sorted(folder.iterdir()):
        if not d.is_dir():
            continue
        if not (d.name.isdigit() and 0 <= int(d.name) <= 9):
            continue
        for f in sorted(d.glob("*.bin")):
            size = f.stat().st_size
            if size % 5:
                bad.append(f"{f} ({size} bytes)")
            files.append(f)
            labels.append(int(d.name))
    if bad:
        raise DatasetError(
            f"N-MNIST file(s) whose size is not a multiple of 5 bytes (truncated or not N-MNIST): {', '.join(bad[:5])}"
            + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            + "; delete and materialize or download again"
        )
    if not files:
        raise DatasetError(f"N-MNIST: no .bin recordings under {folder} ({hint})")
    return files, labels


@register(
    "nmnist",
    "N-MNIST event recordings (34x34x2), ROOT/NMNIST/{Train,Test}/<label>/*.bin of any size, 90/10 train/val",
    aliases=("n-mnist",),
)
def load_nmnist(
    root: Path,
    *,
    split_seed: int = 0,
    augment=False,
    download: bool = False,
    representation: str = "image",
    n_time_bins: Optional[int] = None,
    event_count: Optional[int] = None,
    time_window: Optional[int] = None,
    remainder: str = "keep",
    merge_polarities: bool = False,
    first_saccade_only: bool = False,
    val_size: int | float | None = None,
    cache: bool = True,
) -> DatasetSplits:
    augment = event_augmentation(augment)  # train split only
    base = root / "NMNIST"
    if download and not ((base / "Train").is_dir() and (base / "Test").is_dir()):
        import tonic.datasets

        try:
            for train in (True, False):
                tonic.datasets.NMNIST(save_to=str(root), train=train)
        except Exception as e:
            raise DatasetError(f"downloading N-MNIST into {base} failed: {e}") from None
    train_files, train_labels = _scan_nmnist(base / "Train", root)
    test_files, test_labels = _scan_nmnist(base / "Test", root)
    n_val = val_count(len(train_files), val_size)
    tr, va = split_indices(len(train_files), n_val, split_seed)
    opts = dict(
        representation=representation, n_time_bins=n_time_bins, event_count=event_count, time_window=time_window,
        remainder=remainder, merge_polarities=merge_polarities, first_saccade_only=first_saccade_only,
    )
    train_cache = _EventCache(cache)

    def make(files, labels, idx, c, aug=None):
        return EventFolderDataset(
            [files[i] for i in idx], [labels[i] for i in idx], NMNIST_SENSOR_SIZE, cache=c, augment=aug, **opts
        )

    train = make(train_files, train_labels, tr, train_cache, augment)
    channels = 1 if merge_polarities else 2
    variable_T = representation == "frames" and train.framing["n_time_bins"] is None
    return DatasetSplits(
        name="nmnist",
        train=train,
        val=make(train_files, train_labels, va, train_cache),
        test=make(test_files, test_labels, range(len(test_files)), _EventCache(cache)),
        num_classes=10,
        input_shape=(channels, NMNIST_SENSOR_SIZE[1], NMNIST_SENSOR_SIZE[0]),
        sensor_size=NMNIST_SENSOR_SIZE,
        representation=representation,
        classes=[str(i) for i in range(10)],
        collate_fn=collate_frames if variable_T else None,
        root=root,
        info=dict(split_seed=split_seed, val_size=n_val, augment=augment, **train.framing, **{k: v for k, v in opts.items() if k not in train.framing}),
    )
