"""What the two streaming loaders (torch, dali) share.

Both read each batch's rows from the source in worker processes and run ahead of the trainer.
Batches are numbered by a global step, ``epoch * len(loader) + index``, so a stream started at
any (epoch, index) runs on through epoch boundaries: the out-distribution stream of a RATIO run
never stalls at the end of its epoch.

- ``PlannedReader``: picklable; ``read(step)`` returns one rank's batch as uint8 pixels plus
  its crop plan and labels (what a worker sends back).
- ``StreamingLoader``: keeps a prefetching stream open while calls come in order, and reopens
  it at the asked position otherwise (a resume, a jump back to epoch 0 for evaluation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ratio_fast.data.image_source import ImageSource, as_source
from ratio_fast.data.loader import Loader, labels_array
from ratio_fast.data.plan import PAD, plan_batch
from ratio_fast.errors import UserError

# Worker processes per stream when the caller does not say: DALI and DataLoader workers both
# spend their time in numpy slicing and (for folders) decoding; a few keep up with a GPU step.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


@dataclass
class StepBatch:
    """One rank's batch as a worker produces it: nothing cropped yet."""

    images: np.ndarray  # uint8 (b, 32, 32, 3)
    shift: np.ndarray  # int64 (b, 2), (dy, dx) in [0, 2*PAD]; PAD, PAD (no shift) without augment
    flip: np.ndarray  # int64 (b,), 0 without augment
    labels: np.ndarray | None  # int64 (b,)
    cutout: np.ndarray | None = None  # int64 (b, 2) cutout centres; None without cutout


class PlannedReader:
    """Reads the planned rows of any global step; holds only what a worker needs."""

    def __init__(self, source: ImageSource, labels: np.ndarray | None, loader: Loader) -> None:
        self.source = source
        self.labels = labels
        self.batches_per_epoch = len(loader)
        self.plan_args = dict(batch_size=loader.batch_size, num_samples=loader.num_samples,
                              shuffle=loader.shuffle, rank=loader.rank, world_size=loader.world_size,
                              cutout_hw=loader.cutout_hw)
        self.cutout_hw = loader.cutout_hw
        self.seed = loader.seed
        self.augment = loader.augment

    def read(self, step: int) -> StepBatch:
        epoch, index = divmod(step, self.batches_per_epoch)
        plan = plan_batch(self.seed, epoch, index, **self.plan_args)
        shift, flip = plan.shift, plan.flip
        if not self.augment:
            shift, flip = np.full_like(shift, PAD), np.zeros_like(flip)
        labels = None if self.labels is None else self.labels[plan.indices]
        return StepBatch(self.source.read(plan.indices), shift, flip, labels, plan.cutout)


def raise_user_error_behind(error: Exception, reader: PlannedReader, steps: range) -> None:
    """If a worker failed on a bad file, raise that file's ``UserError`` here, as one line.

    Workers send their exceptions back wrapped, with the worker's traceback in the message.
    Reading the batches the workers were preparing (``steps``) again in this process
    reproduces the error with its own type and message; otherwise this returns.
    """
    for step in steps:
        try:
            reader.read(step)
        except UserError as user_error:
            raise user_error from error


class StreamingLoader(Loader):
    """A loader whose batches come from a stream of consecutive global steps.

    Arguments and output: see ``loader.Loader``; ``images`` is an array, memmap or ImageSource,
    read by ``self.reader`` in ``workers`` processes (0: in the calling thread, handy for tests).
    """

    def __init__(
        self,
        images: np.ndarray | ImageSource,
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
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        source = as_source(images)
        super().__init__(len(source), labels, batch_size, device, seed=seed, augment=augment, shuffle=shuffle,
                         drop_last=drop_last, channels_last=channels_last, rank=rank, world_size=world_size,
                         cutout=cutout, image_hw=source.shape[1:3])
        self.workers = workers
        self.reader = PlannedReader(source, labels_array(labels), self)
        self._stream: Iterator[tuple[torch.Tensor, torch.Tensor | None]] | None = None
        self._next_step = -1

    def _make_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        step = epoch * len(self) + index
        if self._stream is None or step != self._next_step:
            self.close()
            self._stream = self._open_stream(step)
        self._next_step = step + 1
        return next(self._stream)

    def close(self) -> None:
        """Stop the current stream and its workers (the next batch opens a new one)."""
        stream, self._stream = getattr(self, "_stream", None), None  # None if __init__ failed
        if stream is not None:
            self._close_stream(stream)

    def __del__(self) -> None:
        self.close()

    def _open_stream(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Batches of global steps step, step + 1, ... as (x, y) in the contract's format."""
        raise NotImplementedError

    def _close_stream(self, stream: Iterator) -> None:
        raise NotImplementedError
