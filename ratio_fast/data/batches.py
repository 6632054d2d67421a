"""What a loader produces, whichever its kind: ``BatchSpec`` (the loaders' one set of options) and
``Loader``, the contract every kind keeps.

- ``len(loader)``: global batches per epoch (the same on every rank).
- ``loader.batch(epoch, index) -> (x, y)``: x float32 (B / world_size, 3, H, W) in [0, 1] on the
  loader's device (channels_last memory if asked), y int64 labels or ``None`` for an unlabelled
  set; a pure function of (seed, epoch, index) (``spec.plan``), augmented as the spec's --augment
  row says (``augment.Augmenter``).
- ``loader.epoch(e, start=0)`` yields the batches of epoch ``e`` from ``start`` on; iterating the
  loader gives epoch 0; ``loader.close()`` stops its worker processes, if it has any.

The kinds (``choices.LOADERS``): ``resident.py`` (gpu), ``streaming.py`` (torch), ``dali.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ratio_fast import choices
from ratio_fast.choices import AUGMENTATIONS, Augmentation
from ratio_fast.data.plan import BatchPlan, Draws, batches_per_epoch, check_sharding, plan_batch
from ratio_fast.datasets import CIFAR10
from ratio_fast.errors import UserError


@dataclass(frozen=True)
class BatchSpec:
    """What a loader produces, whichever its kind: the loaders' one set of options."""

    batch_size: int  # global, over all ranks; each rank gets batch_size // world_size
    seed: int = 0
    augment: str = "autoaugment_cutout"  # a name of choices.AUGMENTATIONS
    mean: tuple[float, float, float] = CIFAR10.mean  # the data set's mean colour, in [0, 1]: the fills
    shuffle: bool = True
    drop_last: bool = True
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.augment not in AUGMENTATIONS:
            raise UserError(f"--augment: unknown augmentation {self.augment!r}; "
                            f"choose one of {', '.join(AUGMENTATIONS)}")
        check_sharding(self.batch_size, self.rank, self.world_size)

    @classmethod
    def in_order(cls, batch_size: int, channels_last: bool = False) -> "BatchSpec":
        """Every image once, in order, as it is: test sets and evaluation."""
        return cls(batch_size, augment="none", shuffle=False, drop_last=False, channels_last=channels_last)

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    @property
    def augmentation(self) -> Augmentation:
        """The --augment row: every loader reads what to do from its facts."""
        return AUGMENTATIONS[self.augment]

    @property
    def draws(self) -> Draws:
        return Draws.of(self.augmentation)

    def plan(self, epoch: int, index: int, num_samples: int, image_hw: tuple[int, int]) -> BatchPlan:
        """Which rows and draws this rank's part of global batch (epoch, index) holds, in a set of
        ``num_samples`` images of size ``image_hw``."""
        return plan_batch(self.seed, epoch, index, batch_size=self.batch_size, num_samples=num_samples,
                          shuffle=self.shuffle, draws=self.draws, image_hw=image_hw, rank=self.rank,
                          world_size=self.world_size)


class Loader:
    """Base class: checks arguments, numbers batches, iterates epochs; subclasses make batches."""

    def __init__(self, num_samples: int, labels: np.ndarray | torch.Tensor | None, spec: BatchSpec,
                 device: torch.device | str, image_hw: tuple[int, int]) -> None:
        if num_samples == 0 or (spec.drop_last and num_samples < spec.batch_size):
            raise ValueError(f"{num_samples} images make no batch of {spec.batch_size} (drop_last={spec.drop_last})")
        if labels is not None and tuple(labels.shape) != (num_samples,):
            raise ValueError(f"labels must have shape ({num_samples},), got {tuple(labels.shape)}")
        self.spec = spec
        self.num_samples = num_samples
        self.device = torch.device(device)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))

    def __len__(self) -> int:
        """Global batches per epoch."""
        return batches_per_epoch(self.num_samples, self.spec.batch_size, self.spec.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The batches of epoch 0; use ``epoch(e)`` for the others."""
        return self.epoch(0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield the batches of ``epoch`` from batch index ``start`` on (to resume mid-epoch)."""
        for index in range(start, len(self)):
            yield self.batch(epoch, index)

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's part of global batch ``index`` of ``epoch``: (x, y) as the module says."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches per epoch")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return self._make_batch(epoch, index)

    def close(self) -> None:
        """Stop the worker processes, if the kind has any (``streaming.StreamingLoader``)."""

    def _make_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


def labels_array(labels: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
    """Labels as a host int64 array (or None)."""
    if labels is None:
        return None
    if torch.is_tensor(labels):
        return labels.detach().cpu().numpy().astype(np.int64)
    return np.asarray(labels, dtype=np.int64)


def installed(kind: choices.LoaderOption) -> bool:
    """Whether the package a loader kind needs (its ``package``, e.g. nvidia.dali) is installed;
    imports nothing of it."""
    if kind.package is None:
        return True
    parts = kind.package.split(".")
    return all(importlib.util.find_spec(".".join(parts[:n])) is not None for n in range(1, len(parts) + 1))
