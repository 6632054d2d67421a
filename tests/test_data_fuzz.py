"""Fuzz: random, truncated and bit-flipped versions of valid data files, thrown at the loaders.

Each case must either load valid data (uint8 images of the right shape, batches in [0, 1]) or
raise a one-line ``UserError``; any other exception type is a bug. Seeded, about 60 cases.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from ratio_fast.data import BatchSpec, load_out_distribution, make_loader
from ratio_fast.data.cifar import load_cifar
from ratio_fast.errors import UserError

CASES_PER_FORMAT = 12
ROWS = 8


def valid_cifar100_train() -> bytes:
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (ROWS, 3072), dtype=np.uint8),
             b"fine_labels": [int(v) for v in rng.integers(0, 100, ROWS)],
             b"coarse_labels": [0] * ROWS}
    return pickle.dumps(batch, protocol=2)


def valid_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(1).integers(0, 256, (ROWS, 32, 32, 3), dtype=np.uint8))
    return buffer.getvalue()


def valid_tiny_images() -> bytes:
    return np.random.default_rng(2).integers(0, 256, (ROWS, 3072), dtype=np.uint8).tobytes()


def valid_exclusion_list() -> bytes:
    return b"1\n3\n\n8\n"


def valid_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def mutations(good: bytes, seed: int):
    """Random bytes, truncations and bit flips of ``good``; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    out = [b"", good[:1], good[: len(good) // 2], good[:-1]]
    while len(out) < CASES_PER_FORMAT:
        choice = len(out) % 3
        if choice == 0:
            out.append(rng.integers(0, 256, int(rng.integers(1, 2 * len(good))), dtype=np.uint8).tobytes())
        elif choice == 1:
            out.append(good[: int(rng.integers(1, len(good)))])
        else:
            flipped = bytearray(good)
            for position in rng.integers(0, len(good), int(rng.integers(1, 8))):
                flipped[position] ^= 1 << int(rng.integers(0, 8))
            out.append(bytes(flipped))
    return out


def load_through_a_loader(source) -> None:
    """Read the whole set as an epoch of the torch loader and check what comes out."""
    loader = make_loader("torch", source, None, BatchSpec(len(source), drop_last=False), "cpu", workers=0)
    x, _ = loader.batch(0, 0)
    assert x.shape == (len(source), 3, 32, 32) and 0 <= x.min() and x.max() <= 1


def open_cifar(tmp_path, data: bytes) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(data)
    images, labels = load_cifar("cifar100", tmp_path, train=True, download=False)
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3) and labels.shape == (len(images),)
    load_through_a_loader(load_out_distribution("cifar100", tmp_path, in_name="cifar10"))


def open_npy(tmp_path, data: bytes) -> None:
    (tmp_path / "z.npy").write_bytes(data)
    load_through_a_loader(load_out_distribution(str(tmp_path / "z.npy"), tmp_path, in_name="cifar10"))


def open_tiny_images(tmp_path, data: bytes) -> None:
    (tmp_path / "tiny.bin").write_bytes(data)
    load_through_a_loader(load_out_distribution(str(tmp_path / "tiny.bin"), tmp_path, in_name="cifar10"))


def open_exclusion_list(tmp_path, data: bytes) -> None:
    (tmp_path / "tiny.bin").write_bytes(valid_tiny_images())
    (tmp_path / "exclude.txt").write_bytes(data)
    source = load_out_distribution(str(tmp_path / "tiny.bin"), tmp_path, in_name="cifar10",
                                   exclude=[str(tmp_path / "exclude.txt")])
    assert 1 <= len(source) <= ROWS
    load_through_a_loader(source)


def open_png(tmp_path, data: bytes) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a_good.png").write_bytes(valid_png())
    (folder / "b_fuzzed.png").write_bytes(data)
    load_through_a_loader(load_out_distribution(str(folder), tmp_path, in_name="cifar10"))


FORMATS = {
    "cifar_pickle": (valid_cifar100_train, open_cifar),
    "npy": (valid_npy, open_npy),
    "tiny_images_bin": (valid_tiny_images, open_tiny_images),
    "exclusion_list": (valid_exclusion_list, open_exclusion_list),
    "png": (valid_png, open_png),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_valid_file_loads(tmp_path, fmt):
    make_valid, open_file = FORMATS[fmt]
    open_file(tmp_path, make_valid())  # the fuzz below starts from files that do load


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_damaged_files_load_or_raise_user_error(tmp_path, fmt):
    make_valid, open_file = FORMATS[fmt]
    outcomes = []
    for case, data in enumerate(mutations(make_valid(), seed=sorted(FORMATS).index(fmt))):
        case_dir = tmp_path / f"case{case}"
        case_dir.mkdir()
        try:
            open_file(case_dir, data)
            outcomes.append("loaded")
        except UserError as e:
            assert "\n" not in str(e), f"case {case}: multi-line message {e}"
            outcomes.append("user error")
        # Any other exception fails the test here, naming the case by its traceback.
    assert "user error" in outcomes  # the damage was noticed at least once
