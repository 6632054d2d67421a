"""The one place that turns dataset names and paths (the CLI's flags) into arrays.

The trainer and the CLI call ``load_in_distribution`` (``--dataset``) and
``load_out_distribution`` (``--out-data``); everything they return is uint8 (N, 32, 32, 3)
HWC, ready for ``DeviceLoader``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ratio_fast.data.cifar import CIFAR_SPECS, load_cifar
from ratio_fast.data.npy import load_npy_images
from ratio_fast.data.synthetic import make_synthetic, make_synthetic_out
from ratio_fast.errors import UserError

IN_DISTRIBUTIONS = ("cifar10", "cifar100", "synthetic")
OUT_DISTRIBUTIONS = ("synthetic", "cifar10", "cifar100")  # or a path to a .npy file

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
) -> np.ndarray:
    """Load unlabelled out-distribution images uint8 (N,32,32,3) for ``--out-data``.

    ``spec`` is a path to a ``.npy`` file (memory-mapped), ``synthetic`` (generated, default
    10240 images), or ``cifar10`` / ``cifar100`` (that set's train split, labels dropped).
    Using the in-distribution itself as out-distribution is refused: it would train the model
    to be unsure on exactly the images it must classify. (``synthetic`` with the synthetic
    in-distribution is fine: the out-distribution generator shares nothing with its classes.)
    """
    if spec in CIFAR_SPECS:
        if spec == in_name:
            raise UserError(f"--out-data: {spec!r} is also the in-distribution (--dataset); "
                            f"training low confidence on it contradicts classifying it, "
                            f"pick another set (choices: {_out_choices()})")
        images, _labels = load_cifar(spec, data_dir, train=True, download=download)
        return images
    if spec == "synthetic":
        return make_synthetic_out(_synthetic_size(synthetic_size, SYNTHETIC_TRAIN_SIZE), seed)
    if spec.endswith(".npy") or os.sep in spec or (os.altsep and os.altsep in spec):
        try:
            return load_npy_images(Path(spec))
        except UserError as e:
            raise UserError(f"--out-data: {e}") from e
    raise UserError(f"--out-data: {spec!r} is neither a .npy file nor a known set; "
                    f"choose one of {_out_choices()}")


def _out_choices() -> str:
    return ", ".join(OUT_DISTRIBUTIONS) + ", or a path to a .npy file (N,32,32,3) uint8"


def _synthetic_size(requested: int | None, default: int) -> int:
    if requested is None:
        return default
    if requested < 1:
        raise UserError(f"--synthetic-size: must be a positive number of images, got {requested}")
    return int(requested)
