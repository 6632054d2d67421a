"""The contract every loader kind (gpu, torch, dali) keeps, and the argument checks they share.

- ``len(loader)``: global batches per epoch (the same on every rank).
- ``loader.batch(epoch, index) -> (x, y)``: x float32 (B / world_size, 3, 32, 32) in [0, 1] on
  the loader's device (channels_last memory if asked), y int64 labels or ``None`` for an
  unlabelled set. A pure function of (seed, epoch, index): see ``plan.py``. With ``augment``:
  random crop with 4-pixel zero padding and horizontal flip; with ``cutout``: one 16x16 square
  zeroed per image (``augment.to_model_input``), independently of ``augment``.
- ``loader.epoch(e, start=0)`` yields the batches of epoch ``e`` from ``start`` on; iterating the
  loader gives epoch 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ratio_fast.data.image_source import IMAGE_SHAPE
from ratio_fast.data.plan import BatchPlan, batches_per_epoch, check_sharding, plan_batch


class Loader:
    """Base class: checks arguments, numbers batches, iterates epochs; subclasses make batches."""

    def __init__(
        self,
        num_samples: int,
        labels: np.ndarray | torch.Tensor | None,
        batch_size: int,
        device: torch.device | str,
        *,
        seed: int,
        augment: bool = True,
        shuffle: bool = True,
        drop_last: bool = True,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        cutout: bool = False,
        image_hw: tuple[int, int] = IMAGE_SHAPE[:2],
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_samples == 0 or (drop_last and num_samples < batch_size):
            raise ValueError(f"{num_samples} images make no batch of {batch_size} (drop_last={drop_last})")
        if labels is not None and tuple(labels.shape) != (num_samples,):
            raise ValueError(f"labels must have shape ({num_samples},), got {tuple(labels.shape)}")
        self.local_batch_size = check_sharding(batch_size, rank, world_size)
        self.num_samples = num_samples
        self.batch_size = batch_size  # global, over all ranks
        self.device = torch.device(device)
        self.seed = seed
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.rank = rank
        self.world_size = world_size
        self.cutout = cutout
        self.cutout_hw = (int(image_hw[0]), int(image_hw[1])) if cutout else None  # where centres are drawn

    def __len__(self) -> int:
        """Global batches per epoch."""
        return batches_per_epoch(self.num_samples, self.batch_size, self.drop_last)

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

    def plan(self, epoch: int, index: int) -> BatchPlan:
        """Which rows, crops and flips this rank's part of batch (epoch, index) holds."""
        return plan_batch(self.seed, epoch, index, batch_size=self.batch_size, num_samples=self.num_samples,
                          shuffle=self.shuffle, rank=self.rank, world_size=self.world_size,
                          cutout_hw=self.cutout_hw)

    def _make_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


def labels_array(labels: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
    """Labels as a host int64 array (or None)."""
    if labels is None:
        return None
    if torch.is_tensor(labels):
        return labels.detach().cpu().numpy().astype(np.int64)
    return np.asarray(labels, dtype=np.int64)
