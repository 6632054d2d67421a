"""Where images come from: data-set names and paths (the CLI's flags) turned into image sets.

``load_in_distribution`` (``--dataset``) gives a labelled split as uint8 (N, 32, 32, 3) HWC
arrays; ``load_out_distribution`` (``--out-data``, ``--out-exclude``) gives an ``ImageSource``:
a set loaders read by row, ``len(source)`` and ``source.read(rows) -> uint8 (k, 32, 32, 3)``, so a
240 GB file is never read whole. Sources whose pixels live in a file pickle as their path, so
DALI and DataLoader worker processes receive them cheaply.

- ``.npy``: one uint8 (N, 32, 32, 3) array (the "300K random images"), memory-mapped, header
  checked first.
- ``.bin``: the 80 Million Tiny Images file (as the Outlier Exposure code reads it): no header,
  one row of 3072 bytes per image, the image in Fortran order, so ``row.reshape(32, 32, 3,
  order="F")`` is (row, column, channel). 79,302,017 rows (about 244 GB), memory-mapped.
- a directory: PNG/JPEG files found recursively, ordered by relative path (stable row numbers),
  decoded by pillow per batch in the workers: RGB, shorter side resized to 32 (antialiased
  bilinear), centre crop, so any size will do. Every file is decoded once when the folder is
  opened (in threads, with progress for large folders), so an unreadable one stops the run
  before its first step, or, with ``--skip-bad-images``, is left out like an excluded row.
- ``ExcludedRows``: a source without the rows of exclusion lists (``--out-exclude FILE[:0|:1]``):
  the Tiny Images / CIFAR overlap lists are published some 0-based, some 1-based.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ratio_fast.data.cifar import load_cifar
from ratio_fast.data.synthetic import make_synthetic, make_synthetic_out
from ratio_fast.datasets import CIFAR_NAMES, DATASETS, IMAGE_BYTES, IMAGE_HW, IMAGE_SHAPE, get_dataset, names_a_path
from ratio_fast.errors import Note, UserError
from ratio_fast.progress import Progress

SYNTHETIC_TRAIN_SIZE = 10240
SYNTHETIC_TEST_SIZE = 1024

TINY_IMAGES_NAME = "tiny_images.bin"
TINY_IMAGES_ROWS = 79_302_017
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# ---- sources -------------------------------------------------------------------------------


class ImageSource:
    """Base class: ``len`` images, ``read(rows)`` returns them as uint8 (k, 32, 32, 3)."""

    # True when reading means decoding files (an image folder): a loader that holds the whole
    # set on the device would decode everything up front, so "auto" prefers a streaming loader.
    decodes = False

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images at ``rows`` (int64, any order, repeats allowed) as uint8 (k, 32, 32, 3)."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *IMAGE_SHAPE)

    @property
    def nbytes(self) -> int:
        """Size of the whole set as decoded uint8 pixels."""
        return len(self) * IMAGE_BYTES


class ArraySource(ImageSource):
    """Images held in a uint8 (N, H, W, 3) numpy array or memmap."""

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {array.dtype} {tuple(array.shape)}")
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.array.shape)

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def read(self, rows: np.ndarray) -> np.ndarray:
        # Fancy indexing copies only these rows, also from a memmap.
        return np.asarray(self.array[np.asarray(rows, dtype=np.int64)])


class PicklesAsPath:
    """A source whose pixels live in the file ``self.path``: it pickles as that path and opens the
    file again when unpickled, so a worker process receives it cheaply."""

    path: Path

    def __reduce__(self):
        return type(self), (self.path,)


class NpyImages(PicklesAsPath, ArraySource):
    """A checked ``.npy`` file of uint8 (N, 32, 32, 3) images, memory-mapped; pickles as its path."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        super().__init__(load_npy_images(self.path))


class TinyImages(PicklesAsPath, ImageSource):
    """Rows of a Tiny-Images-layout ``.bin`` file as HWC uint8 images; pickles as its path."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self.rows = _tiny_images_rows(self.path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.rows, IMAGE_BYTES))
        except (OSError, ValueError) as e:
            raise UserError(f"{self.path}: cannot memory-map the file ({e})") from e

    def __len__(self) -> int:
        return self.rows

    def read(self, rows: np.ndarray) -> np.ndarray:
        flat = np.asarray(self._map[np.asarray(rows, dtype=np.int64)])  # (k, 3072), only these rows
        # Fortran order: element (i, j, c) at i + 32*j + 1024*c, i.e. C-order (c, j, i).
        height, width = IMAGE_HW
        return np.ascontiguousarray(flat.reshape(-1, 3, width, height).transpose(0, 3, 2, 1))


class ImageFolder(ImageSource):
    """The PNG/JPEG images under ``root``, in sorted relative-path order, decoded when read."""

    decodes = True

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"{self.root}: no such directory")
        self.files = sorted((p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                            key=lambda p: p.relative_to(self.root).as_posix())
        if not self.files:
            raise UserError(f"{self.root}: holds no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images")
        self.unreadable = _unreadable(self.files, f"checking the images of {self.root}")  # row -> why

    def __len__(self) -> int:
        return len(self.files)

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *IMAGE_SHAPE), dtype=np.uint8)
        for k, row in enumerate(rows):
            out[k] = decode_image(self.files[row])
        return out


class ExcludedRows(ImageSource):
    """``source`` without the rows in ``excluded`` (0-based); the others keep their order."""

    def __init__(self, source: ImageSource, excluded: np.ndarray) -> None:
        self.source = source
        self.excluded = np.unique(np.asarray(excluded, dtype=np.int64))
        if len(self.excluded) and (self.excluded[0] < 0 or self.excluded[-1] >= len(source)):
            raise ValueError(f"excluded rows must lie in [0, {len(source)})")
        # kept_before[j] = how many kept rows come before excluded[j]; kept row p then sits at
        # source row p + (number of j with kept_before[j] <= p). O(log E) per row, O(E) memory.
        self._kept_before = self.excluded - np.arange(len(self.excluded))

    def __len__(self) -> int:
        return len(self.source) - len(self.excluded)

    def source_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows of the underlying source for rows of this view."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows + np.searchsorted(self._kept_before, rows, side="right")

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.source.read(self.source_rows(rows))

    @property
    def decodes(self) -> bool:  # type: ignore[override]
        return self.source.decodes


def as_source(images: np.ndarray | ImageSource) -> ImageSource:
    """Wrap an array as a source; sources pass through."""
    if isinstance(images, ImageSource):
        return images
    return ArraySource(images if isinstance(images, np.ndarray) else np.asarray(images))


# ---- the flags: --dataset, --out-data, --out-exclude ---------------------------------------


@dataclass(frozen=True)
class InDistribution:
    """A labelled split: images uint8 (N,32,32,3), labels int64 (N,) in [0, num_classes)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    def __len__(self) -> int:
        return len(self.labels)


def load_in_distribution(name: str, data_dir: str | os.PathLike, train: bool, synthetic_size: int | None = None,
                         seed: int = 0, *, download: bool = True) -> InDistribution:
    """Load the train or test split of ``name`` (``cifar10``, ``cifar100`` or ``synthetic``).

    ``synthetic_size`` sets the number of synthetic images (default 10240 train, 1024 test);
    ``seed`` picks the synthetic images (its class templates are fixed), CIFAR ignores it.
    """
    data_set = get_dataset(name)
    if name in CIFAR_NAMES:
        images, labels = load_cifar(name, data_dir, train, download=download)
    else:  # the built-in synthetic set
        n = _synthetic_size(synthetic_size, SYNTHETIC_TRAIN_SIZE if train else SYNTHETIC_TEST_SIZE)
        images, labels = make_synthetic(n, data_set.num_classes, seed, split="train" if train else "test")
    return InDistribution(images, labels, data_set.num_classes, name)


def load_out_distribution(spec: str, data_dir: str | os.PathLike, in_name: str, seed: int = 0,
                          synthetic_size: int | None = None, *, download: bool = True,
                          exclude: Sequence[str] = (), flag: str = "--out-data",
                          skip_bad_images: bool = False) -> ImageSource:
    """Open the unlabelled out-distribution images for ``--out-data`` as an ``ImageSource``.

    ``spec`` is ``synthetic`` (generated, default 10240 images), ``cifar10`` / ``cifar100`` (that
    set's train split, labels dropped), or a ``.npy`` / ``.bin`` file or an image directory (see
    the module). ``exclude`` (``--out-exclude``): exclusion lists ``FILE[:0|:1]`` whose rows are
    left out, for any of these (``read_exclusion_list``). ``flag``: the option errors name. An image
    folder's undecodable files are a UserError, or with ``skip_bad_images`` left out with a Note.

    Using the in-distribution itself as out-distribution is refused: it would train the model
    to be unsure on exactly the images it must classify. (``synthetic`` with the synthetic
    in-distribution is fine: the out-distribution generator shares nothing with its classes.)
    """
    source = _open_out_distribution(spec, data_dir, in_name, seed, synthetic_size, download, flag)
    unreadable = getattr(source, "unreadable", {})
    if unreadable:
        example = unreadable[min(unreadable)]
        if not skip_bad_images:
            raise UserError(f"{flag} {spec}: {len(unreadable)} of {len(source)} images cannot be decoded, e.g. "
                            f"{example}; remove them, or pass --skip-bad-images to leave them out")
        warnings.warn(Note(f"{flag} {spec}: leaving out {len(unreadable)} of {len(source)} images that cannot be "
                           f"decoded (--skip-bad-images), e.g. {example}"), stacklevel=2)
    if not exclude and not unreadable:
        return source
    lists = [read_exclusion_list(item, len(source)) for item in exclude]
    excluded = np.unique(np.concatenate([np.fromiter(unreadable, np.int64, len(unreadable)), *lists]))
    if len(excluded) == len(source):
        why = f"--out-exclude {' '.join(exclude)}" if exclude else "--skip-bad-images"
        raise UserError(f"{why}: excludes all {len(source)} images of {flag} {spec}")
    return ExcludedRows(source, excluded)


def read_exclusion_list(spec: str | os.PathLike, num_rows: int) -> np.ndarray:
    """Read ``FILE[:0|:1]``: one row number per line, 0- or 1-based (default 1); sorted 0-based rows.

    1-based by default because the Outlier Exposure list ``80mn_cifar_idxs.txt`` is (its users
    subtract 1); the authors' other lists (``80mn_cifar10_test_idxs.txt`` and the like) are
    0-based: ``FILE:0``. Blank lines and repeats are fine; anything else that is not a row in
    range is a ``UserError`` naming the file and the line.
    """
    path, base = _exclusion_spec(str(spec))
    shown = f"--out-exclude {spec}"
    try:
        text = path.read_bytes().decode("ascii")
    except FileNotFoundError:
        raise UserError(f"{shown}: no such file") from None
    except OSError as e:
        raise UserError(f"{shown}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{shown}: not a text file of row numbers (byte {e.start} is not ASCII)") from e
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if not line.isdigit():
            raise UserError(f"{shown}, line {number}: {line[:40]!r} is not a row number "
                            f"(expected one {base}-based integer per line)")
        row = int(line)
        if not base <= row < num_rows + base:
            hint = "; a 0-based list is passed as FILE:0" if base == 1 and row == 0 else ""
            raise UserError(f"{shown}, line {number}: row {row} is outside {base}..{num_rows - 1 + base} "
                            f"({base}-based rows of the {num_rows} --out-data images{hint})")
        rows.append(row - base)
    return np.unique(np.asarray(rows, dtype=np.int64))


def _exclusion_spec(spec: str) -> tuple[Path, int]:
    """``FILE``, ``FILE:1`` -> (FILE, 1); ``FILE:0`` -> (FILE, 0)."""
    head, colon, base = spec.rpartition(":")
    if colon and base in ("0", "1") and head:
        return Path(head).expanduser(), int(base)
    return Path(spec).expanduser(), 1


def _open_out_distribution(spec: str, data_dir, in_name: str, seed: int, synthetic_size: int | None,
                           download: bool, flag: str) -> ImageSource:
    if spec in CIFAR_NAMES:
        if spec == in_name:
            raise UserError(f"{flag}: {spec!r} is also the in-distribution (--dataset); "
                            f"training low confidence on it contradicts classifying it, "
                            f"pick another set (choices: {_out_choices()})")
        images, _labels = load_cifar(spec, data_dir, train=True, download=download)
        return ArraySource(images)
    if spec == "synthetic":
        return ArraySource(make_synthetic_out(_synthetic_size(synthetic_size, SYNTHETIC_TRAIN_SIZE), seed))
    path = Path(spec).expanduser()
    opener = {".npy": NpyImages, ".bin": TinyImages}.get(path.suffix.lower())
    if opener is None and path.is_dir():
        opener = ImageFolder
    if opener is None:
        if not names_a_path(spec):
            what = "neither a path nor a known set"
        else:
            what = "a file of unknown type" if path.exists() else "not an existing file or directory"
        raise UserError(f"{flag}: {spec!r} is {what}; choose one of {_out_choices()}")
    try:
        return opener(path)
    except UserError as e:
        raise UserError(f"{flag}: {e}") from e


def _out_choices() -> str:
    return (", ".join(DATASETS) + ", a .npy file (N,32,32,3) uint8, a Tiny Images .bin file, "
            "or a directory of PNG/JPEG images")


def _synthetic_size(requested: int | None, default: int) -> int:
    if requested is None:
        return default
    if requested < 1:
        raise UserError(f"--synthetic-size: must be a positive number of images, got {requested}")
    return int(requested)


# ---- file formats ----------------------------------------------------------------------------


def load_npy_images(path: str | os.PathLike) -> np.ndarray:
    """Open ``path`` as a read-only memmap of uint8 images (N, 32, 32, 3), checked first, so a
    wrong file gives a one-line ``UserError`` naming it instead of a numpy traceback."""
    path = Path(path).expanduser()
    expected = f"(N, {', '.join(map(str, IMAGE_SHAPE))})"
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a .npy array {expected} uint8)")
    shape, dtype, data_offset = _npy_header(path)
    if len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE:
        raise UserError(f"{path}: expected an array of shape {expected}, got {shape}")
    if dtype != np.uint8:
        raise UserError(f"{path}: expected dtype uint8 (pixel values 0..255), got {dtype}")
    if shape[0] == 0:
        raise UserError(f"{path}: the array holds no images (shape {shape})")
    needed = data_offset + int(np.prod(shape))
    size = path.stat().st_size
    if size < needed:
        raise UserError(f"{path}: truncated: the header promises {shape} ({needed} bytes) "
                        f"but the file has {size} bytes")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot memory-map the array ({e})") from e


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte offset of the data) from the .npy header."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                # numpy writes 3.0 only for structured dtypes with utf-8 field names: never uint8.
                raise ValueError(f"format version {version} holds a structured dtype, not uint8")
            return tuple(int(s) for s in shape), dtype, f.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise UserError(f"{path}: not a valid .npy file ({e})") from e


def _tiny_images_rows(path: Path) -> int:
    """Rows in a Tiny Images file, after checking it exists and holds whole rows."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (expected a Tiny Images .bin, rows of {IMAGE_BYTES} bytes)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e
    if not path.is_file():
        raise UserError(f"{path}: not a regular file (expected a Tiny Images .bin)")
    if size == 0 or size % IMAGE_BYTES:
        raise UserError(f"{path}: {size} bytes is not a positive multiple of {IMAGE_BYTES} (one 32x32x3 "
                        f"image per row): truncated, or not in the Tiny Images layout")
    rows = size // IMAGE_BYTES
    # A download cut at a row boundary passes the check above; the published name tells us more.
    if path.name == TINY_IMAGES_NAME and rows != TINY_IMAGES_ROWS:
        raise UserError(f"{path}: {rows} rows, but the published {TINY_IMAGES_NAME} has {TINY_IMAGES_ROWS:,}: "
                        f"truncated download? (rename the file if it is a deliberate subset)")
    return rows


def _unreadable(files: list[Path], what: str, chunk: int = 256) -> dict[int, str]:
    """{row: why} of the files decode_image fails on, decoded in threads (pillow decodes without the
    GIL), with progress for large folders."""
    progress = Progress(len(files), desc=what) if len(files) >= 1000 else None

    def check(start: int) -> dict[int, str]:
        problems = {}
        for row in range(start, min(start + chunk, len(files))):
            try:
                decode_image(files[row])
            except UserError as error:
                problems[row] = str(error)
        return problems

    problems = {}
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        for start, found in zip(range(0, len(files), chunk), pool.map(check, range(0, len(files), chunk))):
            problems.update(found)
            if progress is not None:
                progress.update(min(chunk, len(files) - start))
    if progress is not None:
        progress.close()
    return problems


def decode_image(path: Path) -> np.ndarray:
    """One image file as uint8 (32, 32, 3): RGB, shorter side resized to 32, centre crop."""
    from PIL import Image  # imported here: only folders need pillow

    size = IMAGE_SHAPE[0]
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            scale = size / min(w, h)
            if (w, h) != (size, size):
                w, h = max(size, round(w * scale)), max(size, round(h * scale))
                image = image.resize((w, h), Image.Resampling.BILINEAR)
            left, top = (w - size) // 2, (h - size) // 2
            pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except Exception as e:  # pillow raises many types for damaged files (OSError, SyntaxError, ...)
        raise UserError(f"{path}: cannot decode as an image ({type(e).__name__}: {e})".replace("\n", " ")) from e
    return pixels
