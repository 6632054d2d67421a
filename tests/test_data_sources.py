"""Tests of ratio_fast.data.sources: the in- and out-distribution entry points, .npy files, Tiny
Images .bin, exclusion lists (as published: 0- and 1-based), image folders, --out-data dispatch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from ratio_fast.data import BatchSpec, load_in_distribution, load_out_distribution, make_loader
from ratio_fast.data.cifar import load_cifar
from ratio_fast.data.sources import (ArraySource, ExcludedRows, ImageFolder, NpyImages, TinyImages, load_npy_images,
                                     read_exclusion_list)
from ratio_fast.errors import Note, UserError
from test_data_cifar import N_PER_FILE, write_cifar10, write_cifar100


def write_tiny_images(path, images: np.ndarray) -> None:
    """Write HWC uint8 images in the Tiny Images layout: each row is the image in Fortran order."""
    with open(path, "wb") as f:
        for image in images:
            f.write(image.reshape(-1, order="F").tobytes())


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# --- the entry points: --dataset and --out-data ----------------------------------------------


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


# --- Tiny Images --------------------------------------------------------------------------------


def test_tiny_images_decodes_a_known_image(tmp_path):
    """A row written byte by byte from the layout's definition decodes to the intended image."""
    known = np.zeros((32, 32, 3), np.uint8)
    known[2, 5] = [200, 100, 50]  # row 2, column 5
    known[:, 31, 2] = 7  # last column, blue
    # Fortran order: byte i + 32*j + 1024*c holds pixel (row i, column j, channel c).
    row = np.zeros(3072, np.uint8)
    for i, j, c in zip(*np.nonzero(known)):
        row[i + 32 * j + 1024 * c] = known[i, j, c]
    others = random_images(4)
    path = tmp_path / "tiny.bin"
    write_tiny_images(path, others[:2])
    with open(path, "ab") as f:
        f.write(row.tobytes())  # row 2: the known image
    with open(path, "ab") as f:
        f.write(others[2:].transpose(0, 3, 2, 1).tobytes())  # the same layout, written in bulk

    source = TinyImages(path)
    assert len(source) == 5 and source.shape == (5, 32, 32, 3)
    assert np.array_equal(source.read(np.array([2]))[0], known)
    assert np.array_equal(source.read(np.array([4, 0, 1, 3])), others[[3, 0, 1, 2]])
    # Pickles as its path (for worker processes), not as its pixels.
    blob = pickle.dumps(source)
    assert len(blob) < 1000 and np.array_equal(pickle.loads(blob).read(np.array([2]))[0], known)


@pytest.mark.parametrize("kind", ["missing", "empty", "partial_row", "published_name_truncated", "directory"])
def test_bad_tiny_images_file_names_it(tmp_path, kind):
    path = tmp_path / ("tiny_images.bin" if kind == "published_name_truncated" else "tiny.bin")
    phrase = {"missing": "no such file", "empty": "not a positive multiple of 3072",
              "partial_row": "not a positive multiple of 3072", "published_name_truncated": "79,302,017",
              "directory": "not a regular file"}[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "partial_row":
        path.write_bytes(bytes(3072 * 3 + 100))
    elif kind == "published_name_truncated":
        path.write_bytes(bytes(3072 * 2))
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(UserError) as info:
        load_out_distribution(str(path), tmp_path, in_name="cifar10")
    msg = str(info.value)
    assert msg.startswith("--out-data: ") and str(path) in msg and phrase in msg and "\n" not in msg


# --- exclusion lists ------------------------------------------------------------------------------


def test_exclusion_lists_as_published_are_honoured(tmp_path):
    images = random_images(10)
    write_tiny_images(tmp_path / "tiny.bin", images)
    # 80mn_cifar_idxs.txt's format: 1-based rows, one per line; blank lines and repeats are fine.
    (tmp_path / "one_based.txt").write_text("1\n4\n\n4\n10\n")
    # The authors' other lists (80mn_cifar10_test_idxs.txt, ...) are 0-based; lists may overlap.
    (tmp_path / "zero_based.txt").write_text("0\n5\n")
    source = load_out_distribution(str(tmp_path / "tiny.bin"), tmp_path, in_name="cifar10",
                                   exclude=[str(tmp_path / "one_based.txt"), f"{tmp_path / 'zero_based.txt'}:0"])
    kept = [1, 2, 4, 6, 7, 8]  # 0-based rows 0, 3, 9 (1-based list) and 0, 5 (0-based list) are gone
    assert isinstance(source, ExcludedRows) and len(source) == len(kept)
    assert np.array_equal(source.read(np.arange(len(kept))), images[kept])
    explicit = read_exclusion_list(f"{tmp_path / 'one_based.txt'}:1", 10)
    assert np.array_equal(explicit, read_exclusion_list(tmp_path / "one_based.txt", 10))  # 1: the default
    assert np.array_equal(explicit, [0, 3, 9])
    # Through a loader: an epoch sees exactly the kept images.
    loader = make_loader("torch", source, None, BatchSpec(6, augment="none"), "cpu", workers=0)
    seen = np.round(loader.batch(0, 0)[0].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    assert sorted(map(bytes, seen)) == sorted(map(bytes, images[kept]))


def test_excluded_rows_mapping_matches_np_delete():
    rng = np.random.default_rng(0)
    base = ArraySource(random_images(300))
    excluded = rng.choice(300, size=80, replace=False)
    view = ExcludedRows(base, excluded)
    expected = np.delete(np.arange(300), excluded)
    assert len(view) == 220 and np.array_equal(view.source_rows(np.arange(220)), expected)
    rows = rng.integers(0, 220, 50)
    assert np.array_equal(view.read(rows), base.array[expected[rows]])


@pytest.mark.parametrize("content, base, phrase", [
    ("1\n2\nthree\n", "", "line 3: 'three' is not a row number"),
    ("1\n-2\n", "", "line 2: '-2' is not a row number"),
    ("1.5\n", ":0", "line 1: '1.5' is not a row number"),
    ("0\n", "", "line 1: row 0 is outside 1..10 (1-based rows of the 10 --out-data images; "
                "a 0-based list is passed as FILE:0)"),
    ("3\n11\n", ":1", "line 2: row 11 is outside 1..10"),
    ("0\n9\n10\n", ":0", "line 3: row 10 is outside 0..9 (0-based rows"),
])
def test_bad_exclusion_list_names_file_and_line(tmp_path, content, base, phrase):
    path = tmp_path / "exclude.txt"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        read_exclusion_list(f"{path}{base}", 10)
    msg = str(info.value)
    assert msg.startswith(f"--out-exclude {path}{base}, line") and phrase in msg and "\n" not in msg


def test_exclusion_list_file_errors(tmp_path):
    np.save(tmp_path / "z.npy", random_images(4))
    with pytest.raises(UserError, match="--out-exclude .*nope.txt: no such file"):
        load_out_distribution(str(tmp_path / "z.npy"), tmp_path, in_name="cifar10",
                              exclude=[str(tmp_path / "nope.txt")])
    (tmp_path / "binary.txt").write_bytes(b"1\n\xff\xfe\n")
    with pytest.raises(UserError, match="not a text file"):
        read_exclusion_list(tmp_path / "binary.txt", 4)
    (tmp_path / "all.txt").write_text("1\n2\n3\n4\n")
    with pytest.raises(UserError, match="excludes all 4 images"):
        load_out_distribution(str(tmp_path / "z.npy"), tmp_path, in_name="cifar10", exclude=[str(tmp_path / "all.txt")])


# --- image folders ------------------------------------------------------------------------------


def test_image_folder_decodes_resizes_and_orders(tmp_path):
    folder = tmp_path / "ood"
    (folder / "sub").mkdir(parents=True)
    small = random_images(2, seed=3)
    Image.fromarray(small[0]).save(folder / "b.png")
    Image.fromarray(small[1]).save(folder / "sub" / "a.PNG")
    # A 64x96 JPEG of two flat colours: resized to 32x48, centre crop keeps columns 8..39.
    wide = np.zeros((64, 96, 3), np.uint8)
    wide[:, :48] = [250, 10, 10]
    wide[:, 48:] = [10, 10, 250]
    Image.fromarray(wide).save(folder / "c.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")

    source = load_out_distribution(str(folder), tmp_path, in_name="cifar10")
    assert isinstance(source, ImageFolder) and source.decodes
    assert [p.relative_to(folder).as_posix() for p in source.files] == ["b.png", "c.jpg", "sub/a.PNG"]
    images = source.read(np.array([0, 2, 1]))
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images[0], small[0]) and np.array_equal(images[1], small[1])  # PNG: exact
    jpeg = images[2].astype(int)
    assert np.all(np.abs(jpeg[:, :12] - [250, 10, 10]).max(-1) < 20)  # left half red
    assert np.all(np.abs(jpeg[:, 20:] - [10, 10, 250]).max(-1) < 20)  # right half blue


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="--out-data: .*empty: holds no PNG/JPG/JPEG images"):
        load_out_distribution(str(tmp_path / "empty"), tmp_path, in_name="cifar10")
    (tmp_path / "bad").mkdir()
    Image.fromarray(random_images(1)[0]).save(tmp_path / "bad" / "a.png")
    (tmp_path / "bad" / "x.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    # Checked when opened, before any batch: one line naming the count and the file.
    with pytest.raises(UserError, match=r"--out-data .*bad: 1 of 2 images cannot be decoded, e\.g\. .*x\.jpg: "
                                        r"cannot decode as an image .*--skip-bad-images"):
        load_out_distribution(str(tmp_path / "bad"), tmp_path, in_name="cifar10")
    with pytest.warns(Note, match=r"leaving out 1 of 2 images that cannot be decoded \(--skip-bad-images\)"):
        source = load_out_distribution(str(tmp_path / "bad"), tmp_path, in_name="cifar10", skip_bad_images=True)
    assert len(source) == 1 and np.array_equal(source.read(np.array([0]))[0], random_images(1)[0])
    # A file damaged after the folder was opened is still named when a batch reads it.
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG cut short")
    with pytest.raises(UserError, match=r"a\.png: cannot decode as an image"):
        source.read(np.array([0]))


def test_a_large_folder_is_checked_with_progress(tmp_path, capsys):
    folder = tmp_path / "many"
    folder.mkdir()
    pixels = random_images(1)[0][:8, :8]
    for i in range(1000):
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    source = load_out_distribution(str(folder), tmp_path, in_name="cifar10")
    assert len(source) == 1000
    assert f"checking the images of {folder} 1000/1000 (100%)" in capsys.readouterr().err


# --- --out-data dispatch ------------------------------------------------------------------------


def test_out_data_dispatch(tmp_path):
    np.save(tmp_path / "z.npy", random_images(6))
    npy = load_out_distribution(str(tmp_path / "z.npy"), tmp_path, in_name="cifar10")
    assert isinstance(npy, NpyImages) and len(pickle.dumps(npy)) < 1000  # pickles as its path
    assert np.array_equal(pickle.loads(pickle.dumps(npy)).read(np.arange(6)), random_images(6))
    (tmp_path / "z.csv").write_text("1,2,3")
    with pytest.raises(UserError, match="--out-data: .*z.csv' is a file of unknown type"):
        load_out_distribution(str(tmp_path / "z.csv"), tmp_path, in_name="cifar10")
    with pytest.raises(UserError, match="--out-data: .*not an existing file or directory"):
        load_out_distribution(str(tmp_path / "nowhere"), tmp_path, in_name="cifar10")
    with pytest.raises(UserError, match="--out-data: 'tinyimages' is neither a path nor a known set"):
        load_out_distribution("tinyimages", tmp_path, in_name="cifar10")
