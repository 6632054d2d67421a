"""Tests of ratio_fast.data.cifar: the official CIFAR-10/100 pickles, their download (a file://
URL here) with its md5 check, and a one-line error naming each bad file. CPU only, small files
in tmp_path. The helpers that write CIFAR files are used by tests/test_data_sources.py too."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest

from ratio_fast.data.cifar import load_cifar
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


class FakeResponse:
    """What urlopen returns: `chunks`, then `error` (a dropped connection) or the end of the file."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None):
        self.chunks, self.error = list(chunks), error

    def read(self, size: int) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.error is not None:
            raise self.error
        return b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("error", [urllib.error.URLError("connection reset"), TimeoutError("read timed out")])
def test_a_network_error_mid_download_is_a_download_error_and_leaves_nothing(tmp_path, monkeypatch, error):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: FakeResponse([b"\x1f\x8b part"], error))
    data_dir = tmp_path / "data"
    with pytest.raises(UserError) as info:
        load_cifar("cifar10", data_dir, train=True)
    message = str(info.value)
    assert "download failed" in message and str(error) in message and "\n" not in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert not data_dir.exists()  # no temporary file, no archive, not the directory it made


def test_a_full_disk_during_a_download_is_the_one_line_file_error_and_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: FakeResponse([b"all of it"]))
    monkeypatch.setattr(os, "fsync", disk_full)
    data_dir = tmp_path / "data"
    with pytest.raises(UserError) as info:
        load_cifar("cifar10", data_dir, train=True, md5=hashlib.md5(b"all of it").hexdigest())
    monkeypatch.undo()
    assert str(info.value) == f"cannot write {data_dir / 'cifar-10-python.tar.gz'}: the disk is full"
    assert not data_dir.exists()


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
