"""Tests of ratio_fast.data: CIFAR pickles and download, .npy files, the synthetic set,
the source entry points and the resident (gpu) loader. CPU only, small files in tmp_path."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from ratio_fast.data import BatchSpec, load_in_distribution, load_out_distribution, make_synthetic, make_synthetic_out
from ratio_fast.data.cifar import load_cifar
from ratio_fast.data.loaders import ResidentLoader
from ratio_fast.data.sources import load_npy_images
from ratio_fast.errors import UserError

N_PER_FILE = 20


# --- helpers: CIFAR files in the official layout ---------------------------------------------


def _cifar_batch(seed: int, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Random rows (n, 3072) uint8 and labels covering every class when n allows it."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = (np.arange(n) + seed) % num_classes
    return data, labels


def _write_pickle(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are Python 2 pickles


def write_cifar10(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write DIR/cifar-10-batches-py/{data_batch_1..5,test_batch}; return what each holds."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = _cifar_batch(i, N_PER_FILE, 10)
        _write_pickle(folder / name, {b"batch_label": name.encode(), b"data": data,
                                      b"labels": [int(v) for v in labels],
                                      b"filenames": [b"x.png"] * N_PER_FILE})
        written[name] = (data, labels)
    return written


def write_cifar100(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for i, (name, n) in enumerate([("train", 150), ("test", 40)]):
        data, labels = _cifar_batch(10 + i, n, 100)
        _write_pickle(folder / name, {b"data": data, b"fine_labels": [int(v) for v in labels],
                                      b"coarse_labels": [int(v) // 5 for v in labels]})
        written[name] = (data, labels)
    return written


def make_cifar10_tarball(tmp_path) -> tuple[str, str, dict]:
    """A cifar-10-python.tar.gz lookalike; returns (file:// URL, its md5, contents)."""
    src = tmp_path / "src"
    written = write_cifar10(src)
    tar_path = tmp_path / "served" / "cifar-10-python.tar.gz"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(tar_path.read_bytes()).hexdigest()
    return tar_path.as_uri(), md5, written


# --- CIFAR ------------------------------------------------------------------------------------


def test_cifar10_decodes_planes_to_hwc(tmp_path):
    written = write_cifar10(tmp_path)
    # Image 3 of data_batch_1: R plane 10, G plane 20, B plane 30, except pixel (row 1, col 2)
    # whose red value is 200 (row-major index 1*32+2 = 34 of the red plane).
    data, labels = written["data_batch_1"]
    data[3] = np.repeat(np.array([10, 20, 30], np.uint8), 1024)
    data[3, 34] = 200
    _write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1",
                  {b"data": data, b"labels": [int(v) for v in labels]})

    images, y = load_cifar("cifar10", tmp_path, train=True, download=False)
    assert images.shape == (5 * N_PER_FILE, 32, 32, 3) and images.dtype == np.uint8
    assert y.dtype == np.int64 and y.shape == (5 * N_PER_FILE,)
    assert images[3, 1, 2].tolist() == [200, 20, 30]
    assert images[3, 2, 1].tolist() == [10, 20, 30]  # transposed position is untouched
    # Generic pixel of another file: channel c, row r, col x is at c*1024 + r*32 + x.
    data5, labels5 = written["data_batch_5"]
    k, r, x = 7, 30, 5
    assert images[4 * N_PER_FILE + k, r, x].tolist() == [data5[k, c * 1024 + r * 32 + x] for c in range(3)]
    expected_labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert np.array_equal(y, expected_labels)

    test_images, test_y = load_cifar("cifar10", tmp_path, train=False, download=False)
    data_t, labels_t = written["test_batch"]
    assert test_images.shape == (N_PER_FILE, 32, 32, 3)
    assert np.array_equal(test_images.reshape(N_PER_FILE, -1, 3).transpose(0, 2, 1).reshape(N_PER_FILE, -1), data_t)
    assert np.array_equal(test_y, labels_t)


def test_cifar100_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    for train, name in [(True, "train"), (False, "test")]:
        images, y = load_cifar("cifar100", tmp_path, train=train, download=False)
        data, labels = written[name]
        assert images.shape == (len(data), 32, 32, 3)
        assert images[5, 31, 0].tolist() == [data[5, c * 1024 + 31 * 32] for c in range(3)]
        assert np.array_equal(y, labels)
        assert y.max() == (99 if train else labels.max())  # fine labels reach 99


def test_download_from_file_url(tmp_path):
    url, md5, written = make_cifar10_tarball(tmp_path)
    data_dir = tmp_path / "data"
    images, y = load_cifar("cifar10", data_dir, train=False, url=url, md5=md5)
    assert np.array_equal(y, written["test_batch"][1])
    assert images.shape == (N_PER_FILE, 32, 32, 3)
    assert (data_dir / "cifar-10-python.tar.gz").is_file()
    # Nothing half-written is left behind (temporary download or extraction directories).
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # The second call finds the files and does not download again.
    load_cifar("cifar10", data_dir, train=True, url="file:///nonexistent.tar.gz", md5=md5)


def test_download_refuses_wrong_md5(tmp_path):
    url, _md5, _ = make_cifar10_tarball(tmp_path)
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match="md5"):
        load_cifar("cifar10", data_dir, train=True, url=url, md5="0" * 32)
    assert not data_dir.exists()  # no archive, no partial file, and not the directory it made


def test_offline_download_names_directory_and_url(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError) as info:
        load_cifar("cifar10", tmp_path, train=True)
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "data_batch_1" in msg and "\n" not in msg
    assert not any(tmp_path.iterdir())


def test_missing_files_without_download(tmp_path):
    with pytest.raises(UserError, match="cifar-100-python"):
        load_cifar("cifar100", tmp_path, train=False, download=False)


def _corrupt(kind: str, path):
    good = path.read_bytes()
    if kind == "garbage":
        path.write_bytes(b"this is not a pickle at all" * 10)
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "wrong_size":
        _write_pickle(path, {b"data": np.zeros((N_PER_FILE, 3000), np.uint8), b"labels": [0] * N_PER_FILE})
    elif kind == "wrong_dtype":
        _write_pickle(path, {b"data": np.zeros((N_PER_FILE, 3072), np.float32), b"labels": [0] * N_PER_FILE})
    elif kind == "label_out_of_range":
        _write_pickle(path, {b"data": np.zeros((N_PER_FILE, 3072), np.uint8), b"labels": [10] * N_PER_FILE})
    elif kind == "label_count":
        _write_pickle(path, {b"data": np.zeros((N_PER_FILE, 3072), np.uint8), b"labels": [0] * 3})
    elif kind == "not_a_dict":
        _write_pickle(path, [1, 2, 3])
    elif kind == "code_execution":
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))
        _write_pickle(path, {b"data": Evil(), b"labels": []})


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "wrong_size", "wrong_dtype",
                                  "label_out_of_range", "label_count", "not_a_dict", "code_execution"])
def test_bad_cifar_file_names_the_file(tmp_path, kind):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    _corrupt(kind, bad)
    with pytest.raises(UserError) as info:
        load_cifar("cifar10", tmp_path, train=True, download=False)
    assert str(bad) in str(info.value)


# --- .npy -------------------------------------------------------------------------------------


def test_npy_loads_as_memmap(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "out.npy", arr)
    loaded = load_npy_images(tmp_path / "out.npy")
    assert isinstance(loaded, np.memmap)
    assert np.array_equal(loaded, arr)


def _bad_npy(kind: str, path) -> str:
    """Write a bad file at ``path``; return a phrase the error must contain."""
    if kind == "missing":
        return "no such file"
    if kind == "not_npy":
        path.write_bytes(b"\x00\x01 random bytes, not an npy header" * 5)
        return "not a valid .npy"
    if kind == "truncated":
        np.save(path, np.zeros((10, 32, 32, 3), np.uint8))
        path.write_bytes(path.read_bytes()[:1000])
        return "truncated"
    if kind == "truncated_header":
        np.save(path, np.zeros((10, 32, 32, 3), np.uint8))
        path.write_bytes(path.read_bytes()[:20])
        return "not a valid .npy"
    if kind == "wrong_ndim":
        np.save(path, np.zeros((10, 32, 32), np.uint8))
        return "(10, 32, 32)"
    if kind == "wrong_shape":
        np.save(path, np.zeros((10, 3, 32, 32), np.uint8))
        return "(N, 32, 32, 3), got (10, 3, 32, 32)"
    if kind == "wrong_dtype":
        np.save(path, np.zeros((10, 32, 32, 3), np.float32))
        return "uint8"
    if kind == "empty":
        np.save(path, np.zeros((0, 32, 32, 3), np.uint8))
        return "no images"
    if kind == "pickled_objects":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return "(N, 32, 32, 3)"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "not_npy", "truncated", "truncated_header", "wrong_ndim",
                                  "wrong_shape", "wrong_dtype", "empty", "pickled_objects"])
def test_bad_npy_names_the_file(tmp_path, kind):
    path = tmp_path / "images.npy"
    phrase = _bad_npy(kind, path)
    with pytest.raises(UserError) as info:
        load_npy_images(path)
    msg = str(info.value)
    assert str(path) in msg and phrase in msg and "\n" not in msg


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_balanced():
    x, y = make_synthetic(1000, seed=3)
    x2, y2 = make_synthetic(1000, seed=3)
    assert x.shape == (1000, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, make_synthetic(1000, seed=4)[0])
    assert not np.array_equal(x, make_synthetic(1000, seed=3, split="test")[0])
    counts = np.bincount(y, minlength=10)
    assert counts.min() == counts.max() == 100
    assert 40 < x.std() < 90  # real contrast, not a flat or saturated image


def test_synthetic_test_split_shares_class_templates():
    """A nearest-class-mean classifier fit on train classifies test: the templates are shared."""
    x, y = make_synthetic(2000, split="train")
    xt, yt = make_synthetic(500, split="test")
    means = np.stack([x[y == k].reshape(-1, 3072).mean(0) for k in range(10)]) / 255
    dist = ((xt.reshape(-1, 1, 3072) / 255 - means[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == yt).mean() > 0.9
    # Class means are far apart compared to the L2 attack radius 0.5.
    gaps = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    assert gaps[~np.eye(10, dtype=bool)].min() > 5.0


def test_synthetic_out_is_deterministic_and_unlike_classes():
    z = make_synthetic_out(600, seed=1)
    assert z.shape == (600, 32, 32, 3) and z.dtype == np.uint8
    assert np.array_equal(z, make_synthetic_out(600, seed=1))
    assert not np.array_equal(z, make_synthetic_out(600, seed=2))
    x, y = make_synthetic(2000)
    means = np.stack([x[y == k].reshape(-1, 3072).mean(0) for k in range(10)]) / 255
    xt, _ = make_synthetic(300, split="test")

    def nearest_class_distance(imgs):
        d = ((imgs.reshape(-1, 1, 3072) / 255 - means[None]) ** 2).sum(-1)
        return np.sqrt(d.min(1))

    # Out-distribution images are much farther from every class than in-distribution ones.
    assert np.median(nearest_class_distance(z)) > 2 * np.median(nearest_class_distance(xt))


# --- sources ----------------------------------------------------------------------------------


def test_in_distribution_sources(tmp_path):
    train = load_in_distribution("synthetic", tmp_path, train=True)
    test = load_in_distribution("synthetic", tmp_path, train=False)
    assert (len(train), len(test), train.num_classes, train.name) == (10240, 1024, 10, "synthetic")
    assert len(load_in_distribution("synthetic", tmp_path, train=True, synthetic_size=64)) == 64

    write_cifar10(tmp_path)
    c10 = load_in_distribution("cifar10", tmp_path, train=False)
    assert c10.images.shape == (N_PER_FILE, 32, 32, 3) and c10.num_classes == 10

    with pytest.raises(UserError, match="--dataset.*cifar10"):
        load_in_distribution("imagenet", tmp_path, train=True)


def test_out_distribution_sources(tmp_path):
    write_cifar100(tmp_path)
    c100 = load_out_distribution("cifar100", tmp_path, in_name="cifar10")
    assert c100.shape == (150, 32, 32, 3)
    train_images, _ = load_cifar("cifar100", tmp_path, train=True, download=False)
    assert np.array_equal(c100.read(np.array([3, 0, 3])), train_images[[3, 0, 3]])

    syn = load_out_distribution("synthetic", tmp_path, in_name="synthetic", synthetic_size=32)
    assert syn.shape == (32, 32, 32, 3)

    np.save(tmp_path / "300K.npy", np.zeros((5, 32, 32, 3), np.uint8))
    assert load_out_distribution(str(tmp_path / "300K.npy"), tmp_path, in_name="cifar10").shape[0] == 5

    with pytest.raises(UserError, match="--out-data.*in-distribution"):
        load_out_distribution("cifar100", tmp_path, in_name="cifar100")
    with pytest.raises(UserError, match="--out-data"):
        load_out_distribution("tinyimages", tmp_path, in_name="cifar10")
    with pytest.raises(UserError, match="--out-data.*missing.npy"):
        load_out_distribution(str(tmp_path / "missing.npy"), tmp_path, in_name="cifar10")


# --- the resident loader ----------------------------------------------------------------------


def resident(images, labels, batch_size, **spec):
    return ResidentLoader(images, labels, BatchSpec(batch_size, **spec), "cpu")


def _id_images(n: int) -> np.ndarray:
    """Image i has value (i mod 256) at every pixel of channel 0 and i // 256 in channel 1."""
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[..., 0] = (np.arange(n) % 256)[:, None, None]
    x[..., 1] = (np.arange(n) // 256)[:, None, None]
    x[..., 2] = 1
    return x


def _ids(x: torch.Tensor) -> np.ndarray:
    """Recover image ids from un-augmented batches made of ``_id_images``."""
    v = torch.round(x[:, :2, 0, 0] * 255).long()
    return (v[:, 0] + 256 * v[:, 1]).numpy()


def test_loader_batch_format():
    x, y = make_synthetic(300)
    for channels_last in (False, True):
        loader = resident(x, y, 128, channels_last=channels_last)
        xb, yb = loader.batch(0, 1)
        assert len(loader) == 2
        assert xb.shape == (128, 3, 32, 32) and xb.dtype == torch.float32
        assert yb.shape == (128,) and yb.dtype == torch.int64
        assert 0.0 <= xb.min() and xb.max() <= 1.0 and xb.max() > 0.9
        assert xb.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert xb.is_contiguous() != channels_last

    unlabelled = resident(torch.from_numpy(x), None, 100)
    xb, yb = unlabelled.batch(0, 0)
    assert yb is None and xb.shape == (100, 3, 32, 32)


def test_loader_labels_follow_images_through_shuffle_and_augment():
    labels = np.arange(500) % 10
    x = np.broadcast_to((labels * 20 + 5).astype(np.uint8)[:, None, None, None], (500, 32, 32, 3)).copy()
    loader = resident(x, labels, 64, seed=1, augment="crop_flip")
    for epoch in range(2):
        for xb, yb in loader.epoch(epoch):
            # Crops pad with zeros, so the image's value is its maximum.
            assert torch.equal(torch.round(xb.amax(dim=(1, 2, 3)) * 255).long(), yb * 20 + 5)


def test_loader_is_pure_function_of_seed_epoch_index():
    x, y = make_synthetic(400)
    a = resident(x, y, 64, seed=7)
    b = resident(x, y, 64, seed=7)
    c = resident(x, y, 64, seed=8)
    xa, ya = a.batch(3, 4)
    xb, yb = b.batch(3, 4)  # fresh instance, no earlier batches or epochs drawn
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, c.batch(3, 4)[0])
    assert not torch.equal(xa, a.batch(4, 4)[0])  # epochs differ
    assert torch.equal(xa, a.batch(3, 4)[0])  # back to epoch 3 after the cache moved on
    # Resuming mid-epoch gives the same batches as the full pass.
    full = list(a.epoch(2))
    resumed = list(b.epoch(2, start=3))
    assert len(resumed) == len(full) - 3
    for (x1, y1), (x2, y2) in zip(full[3:], resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(next(iter(a))[0], a.batch(0, 0)[0])


def test_loader_drop_last_and_coverage():
    n = 300
    x = _id_images(n)
    keep = resident(x, None, 128, augment="none", drop_last=False)
    batches = [xb for xb, _ in keep.epoch(5)]
    assert len(keep) == 3 and [len(b) for b in batches] == [128, 128, 44]
    ids = np.concatenate([_ids(b) for b in batches])
    assert sorted(ids.tolist()) == list(range(n))  # every image exactly once per epoch
    assert not np.array_equal(ids, np.arange(n))  # shuffled

    drop = resident(x, None, 128, augment="none")
    assert len(drop) == 2
    with pytest.raises(IndexError):
        drop.batch(0, 2)

    ordered = ResidentLoader(x, None, BatchSpec.in_order(128), "cpu")  # what evaluation reads
    xb, _ = ordered.batch(0, 2)
    assert np.array_equal(_ids(xb), np.arange(256, 300))
    assert torch.equal(xb, torch.from_numpy(x[256:]).permute(0, 3, 1, 2).float() / 255)  # as is
    head = ordered.first(200)  # the first 200 images, in the same batches, the last one cut
    assert len(head) == 2 and head.num_samples == 200 and head.images.data_ptr() == ordered.images.data_ptr()
    assert torch.equal(head.batch(0, 1)[0], ordered.batch(0, 1)[0][:72])
    with pytest.raises(ValueError, match="shuffled"):
        keep.first(10)


def test_loader_crop_offsets_and_flip_statistics():
    """Track two marker pixels through the augmentation to recover (dy, dx, flip) per draw."""
    n = 1024
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[:, 16, 16, 0] = 255  # red marker
    x[:, 16, 17, 1] = 255  # green marker, right of the red one before any flip
    loader = resident(x, None, 256, augment="crop_flip")
    offsets, flips = [], []
    for epoch in range(3):
        for xb, _ in loader.epoch(epoch):
            red = xb[:, 0].flatten(1).argmax(1)
            green = xb[:, 1].flatten(1).argmax(1)
            ri, rj, gj = red // 32, red % 32, green % 32
            assert torch.equal(green // 32, ri)
            flipped = gj == rj - 1
            assert torch.all(flipped | (gj == rj + 1))
            # Unflipped: output (i, j) shows source (i + dy - 4, j + dx - 4).
            # Flipped: output (i, j) shows source (i + dy - 4, 31 - j + dx - 4).
            dy = 20 - ri
            dx = torch.where(flipped, rj + 16 - 31 + 4, 20 - rj)
            offsets.append(torch.stack([dy, dx], 1))
            flips.append(flipped)
            # Exactly two marker pixels survive (the padding adds zeros, nothing else).
            assert torch.equal((xb > 0).sum(dim=(1, 2, 3)), torch.full((256,), 2))
    offsets = torch.cat(offsets)
    flips = torch.cat(flips).float()
    assert offsets.min() >= 0 and offsets.max() <= 8
    pairs = set(map(tuple, offsets.tolist()))
    assert len(pairs) == 81  # all 9 x 9 crop offsets occur
    for axis in range(2):
        freq = torch.bincount(offsets[:, axis], minlength=9).float() / len(offsets)
        assert torch.all((freq - 1 / 9).abs() < 0.03)
    assert abs(flips.mean().item() - 0.5) < 0.03


def test_crop_flip_pads_with_zeros():
    x = np.full((512, 32, 32, 3), 200, np.uint8)
    xb, _ = resident(x, None, 512, augment="crop_flip").batch(0, 0)
    v = torch.round(xb * 255)
    rows_zero = (v == 0).all(dim=(1, 3))  # (B, 32): whole row black in all channels
    cols_zero = (v == 0).all(dim=(1, 2))
    assert rows_zero.sum(1).max() == 4 and cols_zero.sum(1).max() == 4
    assert torch.equal((v == 0) | (v == 200), torch.ones_like(v, dtype=torch.bool))
    assert (rows_zero.sum(1) == 0).any()  # the centre crop occurs too


def test_loader_rejects_bad_inputs():
    x, y = make_synthetic(10)
    with pytest.raises(ValueError):
        resident(x.astype(np.float32), y, 4)
    with pytest.raises(ValueError):
        resident(x, y[:5], 4)
    with pytest.raises(ValueError):
        resident(x, y, 16)  # drop_last leaves no batch


@pytest.mark.gpu
@pytest.mark.parametrize("augment", ["autoaugment_cutout", "crop_flip"])
def test_loader_batches_do_not_sync_the_host(augment):
    """The resident loader's batches, AutoAugment included, never wait for the GPU."""
    x, y = make_synthetic(512)
    loader = ResidentLoader(x, y, BatchSpec(128, augment=augment, channels_last=True), "cuda")
    loader.batch(0, 0)  # the epoch plan is copied to the device here, once
    torch.cuda.set_sync_debug_mode("error")
    try:
        xb, yb = loader.batch(0, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert xb.is_cuda and yb.is_cuda
    assert torch.equal(xb.cpu(), ResidentLoader(x, y, loader.spec, "cpu").batch(0, 1)[0])  # CUDA = CPU, bit for bit
