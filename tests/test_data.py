"""Tests of synopt.data: registry, splits, static and event datasets, event readers, errors."""

import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import synopt.data as data
from synopt.data import DatasetError, DatasetSplits, load, read_events

# ------------------------------------------------------------------------------------ no data root needed


def test_list_datasets():
    names = data.list_datasets()
    for n in ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "nmnist"):
        assert n in names and isinstance(names[n], str) and names[n]


def test_digits_sizes_range_and_determinism(monkeypatch):
    monkeypatch.delenv(data.ENV_DATA_ROOT, raising=False)
    s = load("digits")
    assert isinstance(s, DatasetSplits)
    assert (len(s.train), len(s.val), len(s.test)) == (1257, 180, 360)
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10 and s.sensor_size is None
    xs = torch.stack([s.train[i][0] for i in range(len(s.train))])
    assert xs.shape == (1257, 1, 8, 8) and xs.dtype == torch.float32
    assert xs.min() == 0 and xs.max() == 1
    assert torch.equal(xs * 16, (xs * 16).round())  # exactly pixel / 16
    # deterministic given the seed, disjoint, and the test set does not move with split_seed
    s2 = load("digits", split_seed=0)
    s3 = load("digits", split_seed=1)
    assert torch.equal(s.train.indices, s2.train.indices) and torch.equal(s.val.indices, s2.val.indices)
    assert not torch.equal(s.train.indices, s3.train.indices)
    assert torch.equal(s.test.indices, s3.test.indices)
    all_idx = torch.cat([s.train.indices, s.val.indices, s.test.indices])
    assert len(set(all_idx.tolist())) == 1797
    assert set(s.train.targets.tolist()) == set(range(10))


def test_digits_augment_and_normalize():
    plain = load("digits")
    aug = load("digits", augment="crop+flip+randaugment")
    torch.manual_seed(0)
    x, y = aug.train[0]
    assert x.shape == (1, 8, 8) and 0 <= x.min() and x.max() <= 1 and y == plain.train[0][1]
    assert torch.equal(aug.val[3][0], plain.val[3][0])  # augmentation only on train
    assert torch.equal(aug.test[3][0], plain.test[3][0])
    norm = load("digits", normalize=True)
    assert norm.normalized and not plain.normalized
    xs = torch.stack([norm.train[i][0] for i in range(len(norm.train))])
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1
    loader = DataLoader(aug.train, batch_size=32, shuffle=True)
    xb, yb = next(iter(loader))
    assert xb.shape == (32, 1, 8, 8) and yb.dtype == torch.int64


def test_unknown_dataset_and_option():
    with pytest.raises(DatasetError) as e:
        load("imagenet")
    assert "imagenet" in str(e.value) and "mnist" in str(e.value) and "cifar10" in str(e.value)
    with pytest.raises(DatasetError, match="bogus"):
        load("digits", bogus=1)
    with pytest.raises(DatasetError, match="augmentation"):
        load("digits", augment="sharpen")
    assert len(load("sklearn_digits").test) == 360  # names are matched ignoring case, '-' and '_'


def test_missing_root(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_DATA_ROOT, raising=False)
    for name in ("mnist", "cifar10", "nmnist"):
        with pytest.raises(DatasetError) as e:
            load(name)
        msg = str(e.value)
        assert "--data-root" in msg and "SYNOPT_DATA_ROOT" in msg and "materialize.py" in msg
    with pytest.raises(DatasetError, match="SYNOPT_DATA_ROOT"):
        data.resolve_root(None)
    monkeypatch.setenv(data.ENV_DATA_ROOT, str(tmp_path))
    assert data.resolve_root(None) == tmp_path
    assert data.resolve_root(tmp_path / "x") == tmp_path / "x"
    missing = tmp_path / "does-not-exist"
    with pytest.raises(DatasetError) as e:
        load("mnist", missing)
    assert str(missing) in str(e.value)


def test_missing_files(tmp_path):
    with pytest.raises(DatasetError) as e:
        load("mnist", tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
    assert "download=True" in str(e.value)
    with pytest.raises(DatasetError) as e:
        load("Fashion_MNIST", tmp_path)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(e.value)
    with pytest.raises(DatasetError) as e:
        load("cifar10", tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value) and "CIFAR10" in str(e.value)
    with pytest.raises(DatasetError) as e:
        load("cifar100", tmp_path)
    assert str(tmp_path / "cifar-100-python") in str(e.value)
    with pytest.raises(DatasetError) as e:
        load("nmnist", tmp_path)
    assert str(tmp_path / "NMNIST" / "Train") in str(e.value)
    with pytest.raises(DatasetError) as e:
        read_events(tmp_path / "nothing.aedat4")
    assert str(tmp_path / "nothing.aedat4") in str(e.value)


def test_events_to_frames_rules():
    ev = np.zeros(10, dtype=data.EVENT_DTYPE)
    ev["t"] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 99]
    ev["x"] = np.arange(10) % 4
    ev["p"] = np.arange(10) % 2
    sensor = (4, 3, 2)
    f = data.events_to_frames(ev, sensor, n_time_bins=4)  # bins of 25 us: last event in the last bin
    assert f.shape == (4, 2, 3, 4) and f.sum() == 10 and f[3].sum() == 1 and f[0].sum() == 9
    f = data.events_to_frames(ev, sensor, event_count=3)
    assert f.shape[0] == 4 and f.sum(dim=(1, 2, 3)).tolist() == [3, 3, 3, 1]
    f = data.events_to_frames(ev, sensor, event_count=3, remainder="drop")
    assert f.shape[0] == 3 and f.sum() == 9
    assert data.events_to_frames(ev, sensor, event_count=30, remainder="drop").shape[0] == 1
    f = data.events_to_frames(ev, sensor, time_window=10)
    assert f.shape[0] == 10 and f.sum() == 10
    f = data.events_to_frames(ev, sensor, time_window=10, remainder="drop")  # span 100 us: 10 full windows
    assert f.shape[0] == 10
    f = data.events_to_frames(ev, sensor, time_window=30, remainder="drop")
    assert f.shape[0] == 3 and f.sum() == 9
    img = data.events_to_image(ev, sensor)
    assert torch.equal(img, data.events_to_frames(ev, sensor, n_time_bins=7).sum(0))
    merged = data.events_to_frames(ev, sensor, n_time_bins=2, merge_polarities=True)
    assert merged.shape == (2, 1, 3, 4)
    assert torch.equal(merged[:, 0], data.events_to_frames(ev, sensor, n_time_bins=2).sum(1))
    empty = data.events_to_frames(ev[:0], sensor, n_time_bins=5)
    assert empty.shape == (5, 2, 3, 4) and empty.sum() == 0
    with pytest.raises(DatasetError):
        data.events_to_frames(ev, sensor, n_time_bins=2, event_count=3)
    with pytest.raises(DatasetError, match="sensor"):
        data.events_to_frames(ev, (2, 2, 2), n_time_bins=2)


def test_read_events_unknown_suffix_and_bad_bin(tmp_path):
    p = tmp_path / "rec.xyz"
    p.write_bytes(b"\0" * 10)
    with pytest.raises(DatasetError) as e:
        read_events(p)
    assert str(p) in str(e.value) and ".aedat4" in str(e.value)
    b = tmp_path / "bad.bin"
    b.write_bytes(b"\0" * 12)
    with pytest.raises(DatasetError) as e:
        read_events(b)
    assert str(b) in str(e.value) and "multiple of 5" in str(e.value)


def test_read_events_corrupt_files(tmp_path):
    a = tmp_path / "bad.aedat4"
    a.write_bytes(b"#!AER-DAT4.0\r\n" + b"\0" * 30)
    with pytest.raises(DatasetError) as e:  # aedat panics (a BaseException) on this
        read_events(a)
    assert str(a) in str(e.value)
    r = tmp_path / "bad.raw"
    r.write_bytes(b"% evt 3.0\n% end\n")
    with pytest.raises(DatasetError) as e:  # expelliarmus returns None here
        read_events(r)
    assert str(r) in str(e.value)
    r2 = tmp_path / "noheader.raw"
    r2.write_bytes(b"\1\2\3\4")
    with pytest.raises(DatasetError, match="encoding"):
        read_events(r2)


# ------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_like(data_root, name):
    s = load(name, data_root)
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and len(s.classes) == 10
    for ds in (s.train, s.val, s.test):
        x, y = ds[len(ds) - 1]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert 0 <= y < 10
        assert ds.targets.min() >= 0 and ds.targets.max() <= 9
    assert sorted(torch.bincount(s.test.targets).tolist())[0] > 800  # all classes present
    idx = torch.cat([s.train.indices, s.val.indices])
    assert len(torch.unique(idx)) == 60000
    s2 = load(name, data_root, split_seed=0)
    s3 = load(name, data_root, split_seed=5)
    assert torch.equal(s.val.indices, s2.val.indices) and not torch.equal(s.val.indices, s3.val.indices)
    n = load(name, data_root, normalize=True, augment=True)
    x, _ = n.test[0]
    assert torch.allclose(x, (s.test[0][0] - n.mean[0]) / n.std[0])
    assert n.train[0][0].shape == (1, 28, 28)


@pytest.mark.realdata
def test_mnist_env_root(data_root, monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_ROOT, str(data_root))
    s = load("mnist")
    assert len(s.test) == 10000 and s.root == data_root


@pytest.mark.realdata
def test_cifar10_npz(data_root):
    s = load("cifar10", data_root)
    assert (len(s.train), len(s.val), len(s.test)) == (45000, 5000, 10000)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10 and s.classes[0] == "airplane"
    with np.load(data_root / "CIFAR10" / "test.npz") as z:
        x0, y0 = z["x"][7], int(z["y"][7])
    x, y = s.test[7]
    assert x.shape == (3, 32, 32) and y == y0
    assert torch.equal(x, torch.from_numpy(x0).permute(2, 0, 1).float() / 255)
    assert torch.bincount(s.test.targets).tolist() == [1000] * 10
    a = load("cifar10", data_root, augment="crop+flip+randaugment")
    torch.manual_seed(0)
    xa, ya = a.train[0]
    assert xa.shape == (3, 32, 32) and 0 <= xa.min() and xa.max() <= 1 and ya == s.train[0][1]
    assert torch.equal(a.val[0][0], s.val[0][0])


def _write_cifar_tv(folder, xs, ys, n_per_batch):
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        sl = slice(k * n_per_batch, (k + 1) * n_per_batch)
        d = {
            "batch_label": name,
            "labels": [int(v) for v in ys[sl]],
            "data": np.ascontiguousarray(xs[sl].transpose(0, 3, 1, 2)).reshape(-1, 3072),
            "filenames": [f"{i}.png" for i in range(n_per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]}, f)


@pytest.mark.realdata
def test_cifar10_torchvision_layout(data_root, tmp_path):
    with np.load(data_root / "CIFAR10" / "train.npz") as z:
        xs, ys = z["x"][:60], z["y"][:60]
    _write_cifar_tv(tmp_path / "cifar-10-batches-py", xs, ys, 10)
    s = load("cifar10", tmp_path)  # auto: no npz here, so the torchvision layout
    assert (len(s.train), len(s.val), len(s.test)) == (45, 5, 10)
    assert s.classes == list("abcdefghij") and s.input_shape == (3, 32, 32)
    x, y = s.test[3]
    assert y == int(ys[53]) and torch.equal(x, torch.from_numpy(xs[53]).permute(2, 0, 1).float() / 255)
    tr_idx = int(s.train.indices[0])
    assert torch.equal(s.train[0][0], torch.from_numpy(xs[tr_idx]).permute(2, 0, 1).float() / 255)
    # explicit layout choice on a root that has both
    shutil.copytree(tmp_path / "cifar-10-batches-py", tmp_path / "both" / "cifar-10-batches-py")
    (tmp_path / "both" / "CIFAR10").mkdir()
    os.symlink(data_root / "CIFAR10" / "train.npz", tmp_path / "both" / "CIFAR10" / "train.npz")
    os.symlink(data_root / "CIFAR10" / "test.npz", tmp_path / "both" / "CIFAR10" / "test.npz")
    assert len(load("cifar10", tmp_path / "both", layout="torchvision").test) == 10
    assert len(load("cifar10", tmp_path / "both").test) == 10000
    # a corrupt batch file is named in the error
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError) as e:
        load("cifar10", tmp_path)
    assert "data_batch_3" in str(e.value)


@pytest.mark.realdata
def test_truncated_idx(data_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_root / "MNIST" / "raw").iterdir():
        if f.name == "t10k-images-idx3-ubyte":
            (raw / f.name).write_bytes(f.read_bytes()[:100_000])
        else:
            os.symlink(f, raw / f.name)
    with pytest.raises(DatasetError) as e:
        load("mnist", tmp_path)
    assert str(raw / "t10k-images-idx3-ubyte") in str(e.value) and "truncated" in str(e.value)


@pytest.mark.realdata
def test_npz_wrong_shape(data_root, tmp_path):
    d = tmp_path / "CIFAR10"
    d.mkdir()
    np.savez(d / "train.npz", x=np.zeros((10, 32, 32), np.uint8), y=np.zeros(10, np.int64))
    os.symlink(data_root / "CIFAR10" / "test.npz", d / "test.npz")
    with pytest.raises(DatasetError) as e:
        load("cifar10", tmp_path)
    assert str(d / "train.npz") in str(e.value) and "(10, 32, 32)" in str(e.value)
    (d / "train.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DatasetError) as e:
        load("cifar10", tmp_path)
    assert str(d / "train.npz") in str(e.value)


def _n_events(path):
    size = os.path.getsize(path)
    assert size % 5 == 0
    return size // 5


@pytest.mark.realdata
def test_nmnist_time_bins_and_image(data_root):
    s = load("nmnist", data_root, representation="frames", n_time_bins=8)
    assert (len(s.train), len(s.val), len(s.test)) == (900, 100, 100)
    assert s.sensor_size == (34, 34, 2) and s.input_shape == (2, 34, 34) and s.collate_fn is None
    img = load("nmnist", data_root, representation="image")
    assert img.representation == "image" and img.input_shape == (2, 34, 34)
    for split, isplit in ((s.train, img.train), (s.val, img.val), (s.test, img.test)):
        for i in (0, len(split) - 1):
            x, y = split[i]
            path = split.files[i]
            assert x.shape == (8, 2, 34, 34) and x.dtype == torch.float32
            assert y == int(path.parent.name) and isplit.files[i] == path
            assert int(x.sum()) == _n_events(path)  # no event is lost by the time bins
            xi, yi = isplit[i]
            assert yi == y and xi.shape == (2, 34, 34) and torch.equal(xi, x.sum(0))
    # deterministic split, disjoint train/val, test from Test/
    s2 = load("nmnist", data_root, representation="frames", n_time_bins=8, split_seed=3)
    assert set(s.train.files).isdisjoint(s.val.files) and len(set(s.train.files) | set(s.val.files)) == 1000
    assert s.val.files == load("nmnist", data_root).val.files and s.val.files != s2.val.files
    assert all(p.parts[-3] == "Test" for p in s.test.files)
    xb, yb = next(iter(DataLoader(s.train, batch_size=16)))
    assert xb.shape == (16, 8, 2, 34, 34) and yb.shape == (16,)


@pytest.mark.realdata
def test_nmnist_event_count_frames(data_root):
    s = load("nmnist", data_root, representation="frames", event_count=3000)
    assert s.collate_fn is data.collate_frames
    for i in range(3):
        x, _ = s.train[i]
        n = _n_events(s.train.files[i])
        per_frame = x.sum(dim=(1, 2, 3))
        assert x.shape[0] == -(-n // 3000) and per_frame[:-1].eq(3000).all() and per_frame[-1] == n - 3000 * (x.shape[0] - 1)
        assert int(x.sum()) == n
    d = load("nmnist", data_root, representation="frames", event_count=3000, remainder="drop")
    x, _ = d.train[0]
    n = _n_events(d.train.files[0])
    assert x.shape[0] == n // 3000 and int(x.sum()) == 3000 * (n // 3000)
    di = load("nmnist", data_root, representation="image", event_count=3000, remainder="drop")
    assert torch.equal(di.train[0][0], x.sum(0))
    m = load("nmnist", data_root, representation="frames", event_count=3000, merge_polarities=True)
    xm, _ = m.train[0]
    assert xm.shape[1:] == (1, 34, 34) and m.input_shape == (1, 34, 34)
    assert torch.equal(xm[:, 0], s.train[0][0].sum(1))
    xb, yb, lengths = next(iter(DataLoader(s.train, batch_size=6, collate_fn=s.collate_fn)))
    assert xb.shape[0] == 6 and xb.shape[2:] == (2, 34, 34) and lengths.max() == xb.shape[1]
    for j in range(6):
        assert xb[j, lengths[j]:].sum() == 0 and torch.equal(xb[j, : lengths[j]], s.train[j][0])


@pytest.mark.realdata
def test_nmnist_cache_and_bad_file(data_root, tmp_path):
    s = load("nmnist", data_root)
    assert len(s.train.cache) == 0
    s.train[0], s.val[0]
    assert len(s.train.cache) == 2 and s.train.cache is s.val.cache
    # a folder of any size works, and a truncated recording is named at load time
    for part, n in (("Train", 3), ("Test", 2)):
        for f in sorted((data_root / "NMNIST" / part / "4").glob("*.bin"))[:n]:
            dst = tmp_path / "NMNIST" / part / "4" / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
    small = load("nmnist", tmp_path, val_size=1)
    assert (len(small.train), len(small.val), len(small.test)) == (2, 1, 2)
    bad = tmp_path / "NMNIST" / "Train" / "4" / "99999.bin"
    bad.write_bytes(b"\0" * 13)
    with pytest.raises(DatasetError) as e:
        load("nmnist", tmp_path)
    assert str(bad) in str(e.value) and "multiple of 5" in str(e.value)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "fname,sensor",
    [
        ("sample.aedat4", (320, 240, 2)),
        ("evt2_sample.raw", (640, 480, 2)),
        ("evt3_sample.raw", (1280, 720, 2)),
        ("sample_ncars.dat", None),
        ("sample_nmnist.bin", (34, 34, 2)),
    ],
)
def test_read_events_samples(data_root, fname, sensor):
    path = data_root / "DVS" / fname
    ev, size = read_events(path)
    assert ev.dtype.names == ("x", "y", "t", "p") and len(ev) > 0
    if sensor is not None:
        assert size == sensor
    W, H, P = size
    assert ev["x"].max() < W and ev["y"].max() < H and set(np.unique(ev["p"])) <= set(range(P))
    assert np.all(np.diff(ev["t"]) >= 0)
    if fname.endswith(".bin"):
        assert len(ev) == _n_events(path)
    frames = data.events_to_frames(ev, size, n_time_bins=4)
    assert frames.shape == (4, P, H, W) and int(frames.sum()) == len(ev)


@pytest.mark.realdata
def test_read_events_unsupported_sample(data_root):
    path = data_root / "DVS" / "sample_stmnist.mat"
    with pytest.raises(DatasetError) as e:
        read_events(path)
    assert str(path) in str(e.value) and "unsupported" in str(e.value)


@pytest.mark.realdata
def test_cifar100_torchvision_layout(data_root, tmp_path):
    # real CIFAR-10 pixels in the CIFAR-100 file format (this checks the reader, not the labels' meaning)
    with np.load(data_root / "CIFAR10" / "train.npz") as z:
        xs, ys = z["x"][:30], z["y"][:30].astype(np.int64)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, sl in (("train", slice(0, 20)), ("test", slice(20, 30))):
        with open(d / name, "wb") as f:
            pickle.dump(
                {
                    "data": np.ascontiguousarray(xs[sl].transpose(0, 3, 1, 2)).reshape(-1, 3072),
                    "fine_labels": [int(v) * 10 for v in ys[sl]],
                    "coarse_labels": [int(v) * 2 for v in ys[sl]],
                },
                f,
            )
    fine = load("cifar100", tmp_path, val_size=4)
    assert (len(fine.train), len(fine.val), len(fine.test)) == (16, 4, 10) and fine.num_classes == 100
    x, y = fine.test[0]
    assert y == ys[20] * 10 and torch.equal(x, torch.from_numpy(xs[20]).permute(2, 0, 1).float() / 255)
    coarse = load("cifar100", tmp_path, labels="coarse", val_size=4)
    assert coarse.num_classes == 20 and coarse.test[0][1] == ys[20] * 2
