"""Static image datasets: digits (embedded), MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100.

All of them end up as one :class:`ImageDataset` per split over a shared uint8 ``[N, C, H, W]`` tensor, so
indexing is a tensor slice (no PIL) and augmentation runs on uint8 tensors with torchvision transforms.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError
from .registry import DatasetSplits, register, split_indices, val_count

__all__ = ["ImageDataset", "build_augment", "read_idx_header"]

STATS = {
    "digits": ((0.3053,), (0.3760,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _fix_hint(root: Path) -> str:
    return f"Run `python ../shared/data/materialize.py {root}` (the project's test data) or pass download=True"


# --------------------------------------------------------------------------------------------- dataset


class ImageDataset(Dataset):
    """``(x, label)`` pairs from a uint8 image tensor: x = augment(img) / scale, optionally normalised.

    ``images`` is uint8 ``[N, C, H, W]`` (shared, never copied between splits), ``indices`` selects the split.
    ``scale`` is the value mapped to 1.0 (255 for 8-bit images, 16 for scikit-learn digits).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: Optional[np.ndarray] = None,
        *,
        scale: float = 255.0,
        augment: Optional[Callable] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ):
        self.images = images
        self.labels = labels
        self.indices = torch.as_tensor(np.arange(len(images)) if indices is None else np.asarray(indices))
        self.scale = float(scale)
        self.augment = augment
        c = images.shape[1]
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(c, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> torch.Tensor:
        """Labels of this split, in order."""
        return self.labels[self.indices]

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        img = self.images[j]
        if self.augment is not None:
            if self.scale != 255.0:  # augmentations (RandAugment) expect the full 8-bit range
                img = (img.float() * (255.0 / self.scale)).round().clamp_(0, 255).to(torch.uint8)
            x = self.augment(img).float() / 255.0
        else:
            x = img.float() / self.scale
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x, int(self.labels[j])


# -------------------------------------------------------------------------------------------- augment

AUGMENT_PARTS = ("crop", "flip", "randaugment")


def build_augment(
    spec: bool | str | None,
    default: str,
    size: int,
    *,
    randaugment_ops: int = 2,
    randaugment_magnitude: int = 9,
) -> Optional[Callable]:
    """uint8-tensor augmentation from ``spec``: False/None = none, True = ``default``, or parts joined by '+'.

    Parts: ``randaugment`` (torchvision RandAugment(num_ops, magnitude)), ``crop`` (random crop with zero
    padding size//8, i.e. 4 px on 32x32, 3 on 28x28, 1 on 8x8) and ``flip`` (horizontal), applied in that order.
    """
    if spec is None or spec is False:
        return None
    from torchvision import transforms as T

    if spec is True:
        spec = default
    parts = [p.strip().lower() for p in str(spec).replace(",", "+").split("+") if p.strip()]
    bad = [p for p in parts if p not in AUGMENT_PARTS]
    if bad:
        raise DatasetError(f"unknown augmentation {'+'.join(bad)!r}; use True or parts of {'+'.join(AUGMENT_PARTS)}")
    ops = []
    if "randaugment" in parts:
        ops.append(T.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude))
    if "crop" in parts:
        ops.append(T.RandomCrop(size, padding=max(1, size // 8)))
    if "flip" in parts:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops) if ops else None


def _make_splits(
    name: str,
    xtr: torch.Tensor,
    ytr: torch.Tensor,
    xte: torch.Tensor,
    yte: torch.Tensor,
    *,
    num_classes: int,
    split_seed: int,
    augment,
    normalize: bool,
    val_size,
    default_augment: str,
    randaugment_ops: int,
    randaugment_magnitude: int,
    scale: float = 255.0,
    classes=None,
    root: Optional[Path] = None,
    train_idx: Optional[np.ndarray] = None,
    test_idx: Optional[np.ndarray] = None,
    info: Optional[dict] = None,
) -> DatasetSplits:
    if train_idx is None:
        train_idx = np.arange(len(xtr))
    n_val = val_count(len(train_idx), val_size)
    tr, va = split_indices(len(train_idx), n_val, split_seed)
    mean, std = STATS[name]
    norm = dict(mean=mean, std=std) if normalize else {}
    aug = build_augment(
        augment, default_augment, xtr.shape[-1],
        randaugment_ops=randaugment_ops, randaugment_magnitude=randaugment_magnitude,
    )
    return DatasetSplits(
        name=name,
        train=ImageDataset(xtr, ytr, train_idx[tr], scale=scale, augment=aug, **norm),
        val=ImageDataset(xtr, ytr, train_idx[va], scale=scale, **norm),
        test=ImageDataset(xte, yte, test_idx, scale=scale, **norm),
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in xtr.shape[1:]),
        classes=classes,
        mean=mean,
        std=std,
        normalized=bool(normalize),
        root=root,
        info=dict(split_seed=split_seed, augment=augment, val_size=n_val, **(info or {})),
    )


# --------------------------------------------------------------------------------------------- digits


@register(
    "digits",
    "scikit-learn load_digits: 1,797 real 8x8 digits, embedded (no data root), 1257/180/360",
    needs_root=False,
    aliases=("sklearn-digits",),
)
def load_digits_splits(
    root=None,
    *,
    split_seed: int = 0,
    augment=False,
    download: bool = False,
    normalize: bool = False,
    val_size: int | float = 180,
    test_size: int = 360,
    randaugment_ops: int = 2,
    randaugment_magnitude: int = 9,
) -> DatasetSplits:
    """Test set: a fixed (seed 0) random 360 of the 1,797 images, the same for every split_seed;
    train/val: a ``split_seed`` permutation of the remaining 1,437 (1257/180)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.uint8)).unsqueeze(1)  # values 0..16
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = np.random.default_rng(0).permutation(len(images))
    test_idx, rest = np.sort(perm[:test_size]), np.sort(perm[test_size:])
    return _make_splits(
        "digits", images, labels, images, labels,
        num_classes=10, split_seed=split_seed, augment=augment, normalize=normalize, val_size=val_size,
        default_augment="crop", randaugment_ops=randaugment_ops, randaugment_magnitude=randaugment_magnitude,
        scale=16.0, classes=[str(i) for i in range(10)], train_idx=rest, test_idx=test_idx,
    )


# ----------------------------------------------------------------------------------------- MNIST-like

IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}


def read_idx_header(path: Path, ndim: int) -> tuple[int, ...]:
    """Check an uncompressed uint8 idx file (magic, ndim, size == header + prod(shape)); return its shape."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
    except OSError as e:
        raise DatasetError(f"cannot read idx file {path}: {e}") from None
    if len(head) < 4 + 4 * ndim or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] != ndim:
        raise DatasetError(
            f"{path} is not a uint8 idx file with {ndim} dimension(s) (bad header); the file is corrupt — "
            "delete it and materialize or download again"
        )
    shape = struct.unpack(">" + "I" * ndim, head[4:])
    expected = 4 + 4 * ndim + int(np.prod(shape, dtype=np.int64))
    if size != expected:
        raise DatasetError(
            f"{path} is truncated or corrupt: {size} bytes but its header {shape} implies {expected}; "
            "delete it and materialize or download again"
        )
    return shape


def _load_mnist_like(name: str, folder: str, tv_name: str, root: Path, download: bool):
    import torchvision

    tv_class = getattr(torchvision.datasets, tv_name)
    raw = root / folder / "raw"
    missing = [f for f, _ in IDX_FILES.values() if not (raw / f).is_file()]
    if missing and download:
        try:
            for train in (True, False):
                tv_class(str(root), train=train, download=True)
        except Exception as e:  # network, checksum, disk
            raise DatasetError(f"downloading {folder} into {raw} failed: {e}") from None
        missing = [f for f, _ in IDX_FILES.values() if not (raw / f).is_file()]
    if missing:
        expected = ", ".join(f for f, _ in IDX_FILES.values())
        raise DatasetError(
            f"{folder} not found under {raw} (expected {expected}; missing {', '.join(missing)}). "
            + _fix_hint(root)
        )
    shapes = {k: read_idx_header(raw / f, nd) for k, (f, nd) in IDX_FILES.items()}
    for part in ("train", "test"):
        ni, nl = shapes[f"{part}_images"][0], shapes[f"{part}_labels"][0]
        if ni != nl:
            raise DatasetError(
                f"{raw}: {IDX_FILES[part + '_images'][0]} has {ni} images but "
                f"{IDX_FILES[part + '_labels'][0]} has {nl} labels; materialize or download again"
            )
    out = []
    for train in (True, False):
        try:
            ds = tv_class(str(root), train=train, download=False)
        except Exception as e:
            raise DatasetError(f"torchvision.datasets.{tv_name} could not read {raw}: {e}") from None
        x = ds.data.unsqueeze(1).contiguous()  # uint8 [N, 1, 28, 28]
        y = ds.targets.to(torch.int64)
        if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
            part = "train" if train else "test"
            raise DatasetError(f"{raw / IDX_FILES[part + '_labels'][0]} holds labels outside 0..9")
        out += [x, y]
    return out, list(getattr(tv_class, "classes", [str(i) for i in range(10)]))


def _mnist_loader(name: str, folder: str, tv_name: str):
    def loader(
        root: Path,
        *,
        split_seed: int = 0,
        augment=False,
        download: bool = False,
        normalize: bool = False,
        val_size: int | float | None = None,
        randaugment_ops: int = 2,
        randaugment_magnitude: int = 9,
    ) -> DatasetSplits:
        (xtr, ytr, xte, yte), classes = _load_mnist_like(name, folder, tv_name, root, download)
        return _make_splits(
            name, xtr, ytr, xte, yte,
            num_classes=10, split_seed=split_seed, augment=augment, normalize=normalize, val_size=val_size,
            default_augment="crop", randaugment_ops=randaugment_ops,
            randaugment_magnitude=randaugment_magnitude, classes=classes, root=root,
        )

    loader.__name__ = f"load_{folder.lower()}"
    return loader


register("mnist", "MNIST handwritten digits, 28x28 grey, ROOT/MNIST/raw (torchvision), 54000/6000/10000")(
    _mnist_loader("mnist", "MNIST", "MNIST")
)
register(
    "fashion-mnist",
    "Fashion-MNIST clothing, 28x28 grey, ROOT/FashionMNIST/raw (torchvision), 54000/6000/10000",
    aliases=("fmnist",),
)(_mnist_loader("fashion-mnist", "FashionMNIST", "FashionMNIST"))


# ---------------------------------------------------------------------------------------------- CIFAR


def _read_cifar_npz(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise DatasetError(f"{path} must hold arrays 'x' and 'y', found {z.files}; materialize again")
            x, y = z["x"], z["y"]
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"cannot read {path} ({type(e).__name__}: {e}); delete it and materialize again") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DatasetError(
            f"{path}: 'x' must be uint8 of shape (N, 32, 32, 3) (HWC RGB), got {x.dtype} {x.shape}; "
            "materialize again"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path}: 'y' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{path}: labels outside 0..{num_classes - 1}")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y.astype(np.int64))


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:
        raise DatasetError(
            f"cannot read CIFAR batch {path} ({type(e).__name__}: {e}); delete it and download again"
        ) from None


def _read_cifar_batches(files: list[Path], label_key: str, num_classes: int):
    xs, ys = [], []
    for p in files:
        d = _unpickle(p)
        if not isinstance(d, dict) or "data" not in d or label_key not in d:
            raise DatasetError(f"{p} is not a CIFAR python batch (needs keys 'data' and {label_key!r})")
        x = np.asarray(d["data"])
        y = np.asarray(d[label_key], dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
            raise DatasetError(
                f"{p}: 'data' must be uint8 (N, 3072) with N labels, got {x.dtype} {x.shape} and {len(y)} labels"
            )
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DatasetError(f"{p}: labels outside 0..{num_classes - 1}")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


CIFAR = {
    10: dict(
        name="cifar10", npz="CIFAR10", tv="cifar-10-batches-py", tv_class="CIFAR10",
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], meta="batches.meta",
    ),
    100: dict(
        name="cifar100", npz="CIFAR100", tv="cifar-100-python", tv_class="CIFAR100",
        train=["train"], test=["test"], meta="meta",
    ),
}


def _load_cifar(n: int, root: Path, layout: str, download: bool, labels: str = "fine"):
    spec = CIFAR[n]
    num_classes = n if (n == 10 or labels == "fine") else 20
    npz_dir = root / spec["npz"]
    tv_dirs = [root / spec["tv"], npz_dir / spec["tv"]]
    if layout not in ("auto", "npz", "torchvision"):
        raise DatasetError(f"layout must be 'auto', 'npz' or 'torchvision', got {layout!r}")
    if n == 100 and labels not in ("fine", "coarse"):
        raise DatasetError(f"labels must be 'fine' or 'coarse', got {labels!r}")

    def have_npz():
        return (npz_dir / "train.npz").exists() or (npz_dir / "test.npz").exists()

    def tv_dir():
        return next((d for d in tv_dirs if d.is_dir()), None)

    use_npz = layout == "npz" or (layout == "auto" and have_npz())
    if not use_npz and tv_dir() is None and download:
        import torchvision

        try:
            for train in (True, False):
                getattr(torchvision.datasets, spec["tv_class"])(str(root), train=train, download=True)
        except Exception as e:
            raise DatasetError(f"downloading {spec['tv_class']} into {root / spec['tv']} failed: {e}") from None

    if use_npz:
        files = [npz_dir / "train.npz", npz_dir / "test.npz"]
        for f in files:
            if not f.is_file():
                raise DatasetError(
                    f"{spec['tv_class']} not found: {f} is missing (npz layout {npz_dir}/{{train,test}}.npz with "
                    f"x uint8 N x 32 x 32 x 3 and y). " + _fix_hint(root)
                )
        if n == 100 and labels == "coarse":
            raise DatasetError(f"the npz layout {npz_dir} holds fine labels only; use layout='torchvision'")
        xtr, ytr = _read_cifar_npz(files[0], num_classes)
        xte, yte = _read_cifar_npz(files[1], num_classes)
        classes = CIFAR10_CLASSES if n == 10 else None
        return xtr, ytr, xte, yte, classes, num_classes, npz_dir

    d = tv_dir()
    if d is None:
        tried = f"{npz_dir}/{{train,test}}.npz, " if layout == "auto" else ""
        raise DatasetError(
            f"{spec['tv_class']} not found under {root} (tried {tried}{tv_dirs[0]} and {tv_dirs[1]}; expected "
            f"torchvision's {spec['tv']}/ with {', '.join(spec['train'] + spec['test'])}). " + _fix_hint(root)
        )
    missing = [f for f in spec["train"] + spec["test"] if not (d / f).is_file()]
    if missing:
        raise DatasetError(f"{spec['tv_class']} under {d} is incomplete: missing {', '.join(missing)}. " + _fix_hint(root))
    key = "labels" if n == 10 else f"{labels}_labels"
    xtr, ytr = _read_cifar_batches([d / f for f in spec["train"]], key, num_classes)
    xte, yte = _read_cifar_batches([d / f for f in spec["test"]], key, num_classes)
    classes = None
    if (d / spec["meta"]).is_file():
        meta = _unpickle(d / spec["meta"])
        mkey = "label_names" if n == 10 else f"{labels}_label_names"
        if isinstance(meta, dict) and mkey in meta and len(meta[mkey]) == num_classes:
            classes = list(meta[mkey])
    if classes is None and n == 10:
        classes = CIFAR10_CLASSES
    return xtr, ytr, xte, yte, classes, num_classes, d


@register(
    "cifar10",
    "CIFAR-10 32x32 RGB, ROOT/CIFAR10/{train,test}.npz or ROOT/cifar-10-batches-py, 45000/5000/10000",
    aliases=("cifar-10",),
)
def load_cifar10(
    root: Path,
    *,
    split_seed: int = 0,
    augment=False,
    download: bool = False,
    normalize: bool = False,
    val_size: int | float | None = None,
    layout: str = "auto",
    randaugment_ops: int = 2,
    randaugment_magnitude: int = 9,
) -> DatasetSplits:
    xtr, ytr, xte, yte, classes, nc, src = _load_cifar(10, root, layout, download)
    return _make_splits(
        "cifar10", xtr, ytr, xte, yte,
        num_classes=nc, split_seed=split_seed, augment=augment, normalize=normalize, val_size=val_size,
        default_augment="crop+flip", randaugment_ops=randaugment_ops,
        randaugment_magnitude=randaugment_magnitude, classes=classes, root=root, info=dict(source=str(src)),
    )


@register(
    "cifar100",
    "CIFAR-100 32x32 RGB, ROOT/cifar-100-python (torchvision) or ROOT/CIFAR100/*.npz, 45000/5000/10000",
    aliases=("cifar-100",),
)
def load_cifar100(
    root: Path,
    *,
    split_seed: int = 0,
    augment=False,
    download: bool = False,
    normalize: bool = False,
    val_size: int | float | None = None,
    layout: str = "auto",
    labels: str = "fine",
    randaugment_ops: int = 2,
    randaugment_magnitude: int = 9,
) -> DatasetSplits:
    xtr, ytr, xte, yte, classes, nc, src = _load_cifar(100, root, layout, download, labels)
    return _make_splits(
        "cifar100", xtr, ytr, xte, yte,
        num_classes=nc, split_seed=split_seed, augment=augment, normalize=normalize, val_size=val_size,
        default_augment="crop+flip", randaugment_ops=randaugment_ops,
        randaugment_magnitude=randaugment_magnitude, classes=classes, root=root,
        info=dict(source=str(src), labels=labels),
    )
