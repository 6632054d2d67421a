"""CIFAR-10 and CIFAR-100 from the official python-pickle layout, with an optional download.

Layout under a data directory ``DIR``::

    DIR/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch   (b'data', b'labels')
    DIR/cifar-100-python/train, test                                   (b'data', b'fine_labels')

Each file is a pickled dict whose b'data' is a uint8 array (N, 3072): one row per image,
laid out as the 1024 red values, then the 1024 green, then the 1024 blue, each plane 32x32
in row-major order. ``load_cifar`` returns images as uint8 (N, 32, 32, 3) HWC and labels
as int64 (N,).

Where the files live (folders, tarball, URL, md5, label key) is the data set's row in
``ratio_fast.datasets``. When files are missing and download is on, the official tarball is
fetched, its md5 checked, written atomically (``files.atomic_copy``) and extracted. Every
failure a user can fix (offline, wrong checksum, corrupt or truncated file, wrong sizes,
labels out of range, a full disk) is a ``UserError`` naming the file or directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ratio_fast.datasets import CIFAR_NAMES, DATASETS, IMAGE_BYTES, IMAGE_HW, DataSet
from ratio_fast.errors import UserError
from ratio_fast.files import atomic_copy

log = logging.getLogger(__name__)


def load_cifar(
    name: str,
    data_dir: str | os.PathLike,
    train: bool,
    download: bool = True,
    *,
    url: str | None = None,
    md5: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR split as (images uint8 (N,32,32,3) HWC, labels int64 (N,)).

    ``name`` is ``"cifar10"`` or ``"cifar100"``. ``url`` and ``md5`` override the official
    tarball address and checksum (tests serve a tarball from a ``file://`` URL).
    """
    if name not in CIFAR_NAMES:
        raise ValueError(f"unknown CIFAR variant {name!r}; expected one of {sorted(CIFAR_NAMES)}")
    data_set = DATASETS[name]
    url = data_set.files.url if url is None else url
    md5 = data_set.files.md5 if md5 is None else md5
    root = Path(data_dir).expanduser()
    folder = root / data_set.files.folder
    files = data_set.files.train_files if train else data_set.files.test_files

    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        if not download:
            raise UserError(_missing_message(data_set, folder, missing, url, "download is off"))
        _download_and_extract(data_set, root, url, md5, missing)

    parts = [_read_batch(folder / f, data_set) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --- reading -------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds what a CIFAR batch contains: dicts, lists, bytes, arrays.

    Pickle can run arbitrary code; a data file from the web should not be able to.
    """

    _ALLOWED = {
        ("_codecs", "encode"),  # protocol <= 2 pickles store bytes through it
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        # Files pickled under numpy 1.x (the official ones) name numpy.core; numpy 2 renamed
        # it numpy._core. Compare under the new name, import under the one this numpy has.
        canonical = module.replace("numpy.core.", "numpy._core.", 1)
        if (canonical, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if not hasattr(np, "_core"):
            canonical = canonical.replace("numpy._core.", "numpy.core.", 1)
        return super().find_class(canonical, name)


def _read_batch(path: Path, data_set: DataSet) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch file and check it; returns HWC uint8 images and int64 labels."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any decoding failure means the file is damaged or not CIFAR
        raise UserError(f"{path}: not a readable {data_set.title} pickle ({type(e).__name__}: {e}); "
                        f"delete it to download it again") from e
    if not isinstance(batch, dict):
        raise UserError(f"{path}: expected a pickled dict, got {type(batch).__name__}")

    label_key = data_set.files.label_key
    data = _get(batch, b"data")
    labels = _get(batch, label_key)
    if data is None or labels is None:
        raise UserError(f"{path}: missing key b'data' or {label_key!r} "
                        f"(is this a {data_set.title} file?)")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES or len(data) == 0:
        raise UserError(f"{path}: b'data' must be uint8 (N, {IMAGE_BYTES}) with N > 0, "
                        f"got {data.dtype} {data.shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: labels are not integers ({e})") from e
    if labels.shape != (len(data),):
        raise UserError(f"{path}: expected {len(data)} labels (one per image), "
                        f"got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= data_set.num_classes:
        raise UserError(f"{path}: labels must lie in [0, {data_set.num_classes - 1}], "
                        f"got [{labels.min()}, {labels.max()}]")

    # Row = R plane, G plane, B plane: (N, C, H, W) -> (N, H, W, C).
    images = np.ascontiguousarray(data.reshape(-1, 3, *IMAGE_HW).transpose(0, 2, 3, 1))
    return images, labels


def _get(d: dict, key: bytes):
    """Look a key up as bytes (official files) or str (files re-pickled by Python 3 code)."""
    if key in d:
        return d[key]
    return d.get(key.decode())


# --- downloading ---------------------------------------------------------------------------


def _missing_message(data_set: DataSet, folder: Path, missing: list[str], url: str, why: str) -> str:
    return (f"{data_set.title} files missing in {folder} ({', '.join(missing)}; {why}): "
            f"download {url} and extract it in {folder.parent} so that {folder} holds them")


def _download_and_extract(data_set: DataSet, root: Path, url: str, md5: str,
                          missing: list[str]) -> None:
    """Fetch the tarball (unless a good copy is already there) and unpack the missing files."""
    folder = root / data_set.files.folder
    created = [d for d in (root, *root.parents) if not d.exists()]  # deepest first
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(_missing_message(data_set, folder, missing, url,
                                         f"cannot create the data directory: {e}")) from e
    archive = root / data_set.files.archive
    if not (archive.is_file() and _md5_of(archive) == md5):
        log.info("downloading %s to %s", url, archive)
        try:
            _download(url, archive, md5)
        except BaseException as e:
            _remove_empty(created)  # a mistyped --data-dir leaves nothing behind
            # URLError, timeouts, bad URLs; a UserError (wrong md5, a full disk) already says what it is
            if isinstance(e, (OSError, ValueError)) and not isinstance(e, UserError):
                raise UserError(_missing_message(data_set, folder, missing, url, f"download failed: {e}")) from e
            raise
    _extract(archive, root, data_set)
    still_missing = [f for f in missing if not (folder / f).is_file()]
    if still_missing:
        raise UserError(f"{archive}: does not contain {data_set.files.folder}/{', '.join(still_missing)}; "
                        f"delete it and download {url} again")


def _remove_empty(directories: list[Path]) -> None:
    """Remove these directories, deepest first, while they are empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def _download(url: str, dest: Path, md5: str) -> None:
    """Stream ``url`` into ``dest`` with ``files.atomic_copy``: ``dest`` is either absent or
    complete with the right md5, even when several processes (DDP ranks) download at once or
    the download is interrupted. Network errors pass through; file-system errors are one line."""
    atomic_copy(dest, _checked_chunks(url, md5))


def _checked_chunks(url: str, md5: str) -> Iterator[bytes]:
    """The bytes at ``url`` in chunks; after the last one, a UserError unless their md5 is ``md5``."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=60) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            yield chunk
    if digest.hexdigest() != md5:
        raise UserError(f"{url}: md5 {digest.hexdigest()} does not match the expected {md5}; "
                        f"the download is damaged or not the official file, try again")


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: Path, root: Path, data_set: DataSet) -> None:
    """Unpack into a temporary directory, then move each file into place with a rename.

    Readers never see a half-written batch file, and files already present are kept.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            with tarfile.open(archive) as tar:
                _safe_extractall(tar, tmp)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"{archive}: cannot extract ({e}); delete it to download it again") from e
        src = tmp / data_set.files.folder
        if not src.is_dir():
            raise UserError(f"{archive}: has no {data_set.files.folder}/ folder; is it the {data_set.title} "
                            f"python tarball?")
        dest = root / data_set.files.folder
        dest.mkdir(exist_ok=True)
        for item in src.iterdir():
            if item.is_file() and not (dest / item.name).exists():
                os.replace(item, dest / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files and directories only, never outside ``dest``."""
    if hasattr(tarfile, "data_filter"):
        # The "data" filter refuses absolute paths, links out of the tree and devices.
        tar.extractall(dest, filter="data")
        return
    # Python < 3.10.12 / 3.11.4 has no filters: check the members ourselves.
    members = []
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
            raise tarfile.TarError(f"unsafe member {m.name!r}")
        members.append(m)
    tar.extractall(dest, members=members)
