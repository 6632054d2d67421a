"""The user-facing choices, one table each: every value a flag takes, as a row with its name, its
one-line help and the facts the code branches on.

Plain Python, no torch or numpy, importing nothing of the machinery: config.py builds flags,
help and checks from these tables, and the machinery looks the facts up in a row instead of
comparing names. A table is a dict of frozen dataclass rows keyed by name, as `datasets.py` holds
the data sets. Where code stands behind each row (a class per loader kind), the module holding
that code keeps a builder table and calls `check_builders` at import, so a row without code, or
code without a row, fails at once. Later choices (modes, attacks, schedules, backends, AMP types,
architectures, OOD sets, norms) are tables of the same pattern in this module.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def table(*rows) -> dict:
    """Rows keyed by their name, in the given order: the order of a flag's choices and of its help."""
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"a table names a row twice: {names}")
    return {row.name: row for row in rows}


def choices_help(rows: dict) -> str:
    """'a: help of a; b: help of b': the part of a flag's help that lists its values."""
    return "; ".join(f"{name}: {row.help}" for name, row in rows.items())


def check_builders(builders: dict, names: Iterable[str], where: str) -> None:
    """Called at import by a builder table (row name -> code): it must cover exactly `names`."""
    missing, extra = set(names) - set(builders), set(builders) - set(names)
    if missing or extra:
        raise RuntimeError(f"{where}: rows without a builder {sorted(missing)}, builders without a row {sorted(extra)}")


# ---- --augment ------------------------------------------------------------------------------

MEAN_COLOUR = "mean colour"  # a fill: the data set's mean colour (as uint8, int(255 * mean) per channel)
ZERO = "zero"  # a fill: black


@dataclass(frozen=True)
class Augmentation:
    """An --augment value: what happens to every training image, in- and out-distribution alike."""

    name: str
    help: str
    crop_fill: str | None  # random crop from a 4-pixel padding of MEAN_COLOUR or ZERO, then a flip; None: neither
    autoaugment: bool  # AutoAugment's CIFAR-10 policy after the flip (shear and translate fill: the mean colour)
    cutout_size: int  # side of the Cutout square (DeVries & Taylor), filled with the mean colour; 0: no Cutout


AUGMENTATIONS: dict[str, Augmentation] = table(
    Augmentation("autoaugment_cutout", "the authors' (crop from a 4-pixel padding of the mean colour, flip, "
                 "AutoAugment's CIFAR-10 policy, a 16x16 Cutout of the mean colour)",
                 crop_fill=MEAN_COLOUR, autoaugment=True, cutout_size=16),
    Augmentation("crop_flip", "crop from a zero padding and flip", crop_fill=ZERO, autoaugment=False, cutout_size=0),
    Augmentation("none", "the images as they are", crop_fill=None, autoaugment=False, cutout_size=0),
)


# ---- --loader -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderOption:
    """A --loader value: a loader kind, or `auto`, which picks one. No kind needs CUDA: each also
    runs on a CPU (the gpu kind then holds the set in host memory)."""

    name: str
    help: str
    title: str  # what the run log calls it
    picks: bool = False  # auto: not a kind, the choice of one (data/loaders.py)
    streams: bool = False  # worker processes read the set batch by batch (any size); False: all of it on the device
    exact_autoaugment: bool = True  # its AutoAugment equals PIL's bit for bit; False: only its other operations do
    package: str | None = None  # the module it needs besides the dependencies (not imported to check)
    install: str | None = None  # the pip package that provides it

    def gives_reference_batches(self, augmentation: Augmentation) -> bool:
        """Whether its batches under `augmentation` are the reference's (the gpu loader's, which
        tests/test_data_autoaugment.py checks against PIL) bit for bit. `auto` picks only such loaders."""
        return self.exact_autoaugment or not augmentation.autoaugment


LOADERS: dict[str, LoaderOption] = table(
    LoaderOption("auto", "the fastest loader that can hold the set and gives the reference batches for --augment, "
                 "measured on CUDA and cached", "auto", picks=True),
    LoaderOption("gpu", "the whole uint8 set on the device, augmented there", "device-resident"),
    LoaderOption("dali", "an NVIDIA DALI pipeline fed by worker processes (its AutoAugment is close to PIL's, "
                 "not equal)", "DALI", streams=True, exact_autoaugment=False, package="nvidia.dali",
                 install="nvidia-dali-cuda130"),
    LoaderOption("torch", "DataLoader worker processes augment on the CPU", "DataLoader", streams=True),
)
LOADER_KINDS = tuple(name for name, row in LOADERS.items() if not row.picks)


def same_batches(loader: str, other: str, augment: str) -> bool:
    """Whether --loader `loader` and --loader `other` give the same batches, bit for bit, under
    --augment `augment`: they are the same, or both give the reference batches."""
    augmentation = AUGMENTATIONS[augment]
    return loader == other or all(LOADERS[name].gives_reference_batches(augmentation) for name in (loader, other))
