"""The one place that turns dataset names and paths (the CLI's flags) into image sets.

The trainer and the CLI call ``load_in_distribution`` (``--dataset``) and
``load_out_distribution`` (``--out-data``): labelled arrays uint8 (N, 32, 32, 3) HWC for the
in-distribution, an ``ImageSource`` (read by row) for the out-distribution; every loader
(``make_loader``) takes either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ratio_fast.data.cifar import CIFAR_SPECS, load_cifar
from ratio_fast.data.folder import ImageFolder
from ratio_fast.data.image_source import ArraySource, ExcludedRows, ImageSource, read_exclusion_list
from ratio_fast.data.npy import NpyImages
from ratio_fast.data.synthetic import make_synthetic, make_synthetic_out
from ratio_fast.data.tiny_images import TinyImages
from ratio_fast.errors import UserError

IN_DISTRIBUTIONS = ("cifar10", "cifar100", "synthetic")
OUT_DISTRIBUTIONS = ("synthetic", "cifar10", "cifar100")  # or a .npy, .bin or image directory path

SYNTHETIC_TRAIN_SIZE = 10240
SYNTHETIC_TEST_SIZE = 1024
SYNTHETIC_NUM_CLASSES = 10


@dataclass(frozen=True)
class InDistribution:
    """A labelled split: images uint8 (N,32,32,3), labels int64 (N,) in [0, num_classes)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    def __len__(self) -> int:
        return len(self.labels)


def load_in_distribution(
    name: str,
    data_dir: str | os.PathLike,
    train: bool,
    synthetic_size: int | None = None,
    seed: int = 0,
    *,
    download: bool = True,
) -> InDistribution:
    """Load the train or test split of ``name`` (``cifar10``, ``cifar100`` or ``synthetic``).

    ``synthetic_size`` sets the number of synthetic images (default 10240 train, 1024 test);
    ``seed`` picks the synthetic images (its class templates are fixed), CIFAR ignores it.
    """
    if name in CIFAR_SPECS:
        images, labels = load_cifar(name, data_dir, train, download=download)
        return InDistribution(images, labels, CIFAR_SPECS[name].num_classes, name)
    if name == "synthetic":
        default = SYNTHETIC_TRAIN_SIZE if train else SYNTHETIC_TEST_SIZE
        n = _synthetic_size(synthetic_size, default)
        images, labels = make_synthetic(n, SYNTHETIC_NUM_CLASSES, seed,
                                        split="train" if train else "test")
        return InDistribution(images, labels, SYNTHETIC_NUM_CLASSES, name)
    raise UserError(f"--dataset: unknown data set {name!r}; choose one of {', '.join(IN_DISTRIBUTIONS)}")


def load_out_distribution(
    spec: str,
    data_dir: str | os.PathLike,
    in_name: str,
    seed: int = 0,
    synthetic_size: int | None = None,
    *,
    download: bool = True,
    exclude: str | os.PathLike | None = None,
) -> ImageSource:
    """Open the unlabelled out-distribution images for ``--out-data`` as an ``ImageSource``.

    ``spec`` is one of:
    - ``synthetic`` (generated, default 10240 images), ``cifar10`` / ``cifar100`` (that set's
      train split, labels dropped), held in memory;
    - a ``.npy`` file, uint8 (N, 32, 32, 3) (the "300K random images"), memory-mapped;
    - a ``.bin`` file in the 80M Tiny Images layout (``tiny_images.py``), memory-mapped;
    - a directory of PNG/JPEG images, decoded per batch (``folder.py``).
    ``exclude`` (``--out-exclude``) names a text file of 1-based row numbers to leave out, such
    as the published Tiny Images / CIFAR overlap list; it applies to any of these.

    Using the in-distribution itself as out-distribution is refused: it would train the model
    to be unsure on exactly the images it must classify. (``synthetic`` with the synthetic
    in-distribution is fine: the out-distribution generator shares nothing with its classes.)
    """
    source = _open_out_distribution(spec, data_dir, in_name, seed, synthetic_size, download)
    if exclude is None:
        return source
    excluded = read_exclusion_list(exclude, len(source))
    if len(excluded) == len(source):
        raise UserError(f"--out-exclude {exclude}: excludes all {len(source)} images of --out-data {spec}")
    return ExcludedRows(source, excluded)


def _open_out_distribution(spec: str, data_dir, in_name: str, seed: int, synthetic_size: int | None,
                           download: bool) -> ImageSource:
    if spec in CIFAR_SPECS:
        if spec == in_name:
            raise UserError(f"--out-data: {spec!r} is also the in-distribution (--dataset); "
                            f"training low confidence on it contradicts classifying it, "
                            f"pick another set (choices: {_out_choices()})")
        images, _labels = load_cifar(spec, data_dir, train=True, download=download)
        return ArraySource(images)
    if spec == "synthetic":
        return ArraySource(make_synthetic_out(_synthetic_size(synthetic_size, SYNTHETIC_TRAIN_SIZE), seed))
    path = Path(spec).expanduser()
    looks_like_path = os.sep in spec or bool(os.altsep and os.altsep in spec) or path.exists()
    opener = _FILE_SOURCES.get(path.suffix.lower())
    if opener is None and path.is_dir():
        opener = ImageFolder
    if opener is None:
        if not looks_like_path:
            what = "neither a path nor a known set"
        else:
            what = "a file of unknown type" if path.exists() else "not an existing file or directory"
        raise UserError(f"--out-data: {spec!r} is {what}; choose one of {_out_choices()}")
    try:
        return opener(path)
    except UserError as e:
        raise UserError(f"--out-data: {e}") from e


_FILE_SOURCES = {".npy": NpyImages, ".bin": TinyImages}


def _out_choices() -> str:
    return (", ".join(OUT_DISTRIBUTIONS) + ", a .npy file (N,32,32,3) uint8, a Tiny Images .bin file, "
            "or a directory of PNG/JPEG images")


def _synthetic_size(requested: int | None, default: int) -> int:
    if requested is None:
        return default
    if requested < 1:
        raise UserError(f"--synthetic-size: must be a positive number of images, got {requested}")
    return int(requested)
