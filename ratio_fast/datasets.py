"""The data sets ratio-fast knows (`--dataset`), one row each, and the shape of every image.

A row holds all the package needs to know of a data set: the per-channel statistics its models
normalize with, its classes, the out-distribution a ratio run trains against by default
(`--out-data`), the out-distribution test sets `eval` uses by default (`--ood`, besides its
built-in generated ones), and for CIFAR where the files live on disk and on the web. Adding a
data set is adding a row here (and, for a new file layout, a reader in `data/`).

Plain Python with no torch or numpy: the CLI, the models and the data package all import it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .validation import lookup

IMAGE_SHAPE = (32, 32, 3)  # every image the package reads or makes: uint8, height x width x RGB (HWC)
IMAGE_HW = IMAGE_SHAPE[:2]
IMAGE_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]


CIFAR_SITE = "https://www.cs.toronto.edu/~kriz/"  # where both official CIFAR tarballs are


@dataclass(frozen=True)
class CifarFiles:
    """Where a CIFAR variant lives: the official python-pickle tarball and what it unpacks to."""

    archive: str  # tarball file name, at CIFAR_SITE
    md5: str
    folder: str  # directory inside the data dir that the tarball unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes  # the pickled dict's key of the labels

    @property
    def url(self) -> str:
        return CIFAR_SITE + self.archive


@dataclass(frozen=True)
class DataSet:
    name: str  # the --dataset value
    title: str  # for messages: "CIFAR-10"
    mean: tuple[float, float, float]  # per RGB channel, pixels in [0, 1]: the model's `mu` buffer
    std: tuple[float, float, float]  # the model's `sigma` buffer
    num_classes: int
    class_names: tuple[str, ...]  # empty: classes are shown as "class k"
    # The default --out-data of a ratio run, offline-friendly. The authors train against 80M Tiny
    # Images minus its CIFAR overlaps (configs/ratio-cifar10-wrn34.json); the "300K random images"
    # are Outlier Exposure's subset of it, not the authors' out-distribution.
    out_data: str
    ood_sets: tuple[str, ...]  # eval's default --ood sets besides the built-in ones (ood_sets.BUILT_IN)
    files: CifarFiles | None  # None: generated in memory, nothing on disk


# The CIFAR-10 statistics are the ones RobustBench stores for Augustin2020Adversarial(_34_10),
# i.e. the values the RATIO models were trained with.
CIFAR10 = DataSet(
    name="cifar10",
    title="CIFAR-10",
    mean=(0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
    std=(0.24703225141799082, 0.24348516474564, 0.26158783926049628),
    num_classes=10,
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    out_data="cifar100",
    ood_sets=("cifar100",),
    files=CifarFiles(
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key=b"labels",
    ),
)
# CIFAR-100 models are normalized with CIFAR-100's own statistics; the authors' Cifar100Wrapper
# carries CIFAR-10's (README: "Defaults that differ").
CIFAR100 = DataSet(
    name="cifar100",
    title="CIFAR-100",
    mean=(0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
    std=(0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
    num_classes=100,
    class_names=(),
    out_data="cifar10",
    ood_sets=("cifar10",),
    files=CifarFiles(
        archive="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
    ),
)
SYNTHETIC = DataSet(  # data/synthetic.py: class templates plus noise, built in for offline runs and tests
    name="synthetic",
    title="synthetic",
    mean=CIFAR10.mean,  # normalized as a CIFAR-10 model is
    std=CIFAR10.std,
    num_classes=10,
    class_names=(),
    out_data="synthetic",  # the generated out-distribution, which shares nothing with the classes
    ood_sets=("synthetic",),
    files=None,
)

DATASETS: dict[str, DataSet] = {data.name: data for data in (CIFAR10, CIFAR100, SYNTHETIC)}
CIFAR_NAMES = tuple(name for name, data in DATASETS.items() if data.files is not None)  # read from files


def get_dataset(name: str) -> DataSet:
    """The row of `--dataset name`; a UserError naming the choices for any other name."""
    return lookup(DATASETS, name, "--dataset", "data set")


def names_a_path(spec: str) -> bool:
    """Whether an --out-data / --ood value is meant as a file or folder (it holds a path separator,
    or something of that name is there) rather than the name of a set."""
    return os.sep in spec or bool(os.altsep and os.altsep in spec) or Path(spec).expanduser().exists()
