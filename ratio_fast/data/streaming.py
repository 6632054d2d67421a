"""Loaders whose workers read (and augment) ahead, batch by batch, so a set of any size streams:
the "torch" kind here, and the stream both it and the "dali" kind (``dali.py``) run on.

- ``PlannedReader``: reads the planned rows of any global step; picklable, it is what a worker
  holds.
- ``StreamingLoader``: a stream of consecutive global steps, kept open while batches are asked
  in order and reopened at the asked position otherwise (a resume, a jump back for evaluation).
  A worker that failed on a bad file surfaces as that file's one-line ``UserError``.
- ``TorchLoader``: DataLoader workers read the planned rows and run the gpu loader's torch
  augmentation on CPU tensors; uint8 batches are copied to the device (pinned, asynchronous).
"""

from __future__ import annotations

import itertools
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ratio_fast.data.augment import Augmenter
from ratio_fast.data.batches import BatchSpec, Loader, labels_array
from ratio_fast.data.plan import BatchPlan
from ratio_fast.data.sources import ImageSource, as_source
from ratio_fast.errors import UserError

# Worker processes per stream when the caller does not say: DALI and DataLoader workers both
# spend their time in numpy slicing, augmentation and (for folders) decoding.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
PREFETCH_PER_WORKER = 2


@dataclass
class StepBatch:
    """One rank's batch as a worker reads it: the planned rows' pixels, nothing augmented yet."""

    images: np.ndarray  # uint8 (b, H, W, 3)
    plan: BatchPlan
    labels: np.ndarray | None  # int64 (b,)


class PlannedReader:
    """Reads the planned rows of any global step, ``epoch * len(loader) + index``, so a stream
    runs on through epoch boundaries; picklable, holds only what a worker needs."""

    def __init__(self, source: ImageSource, labels: np.ndarray | None, loader: Loader) -> None:
        self.source = source
        self.labels = labels
        self.batches_per_epoch = len(loader)
        self.num_samples = loader.num_samples
        self.spec = loader.spec
        self.image_hw = loader.image_hw

    def read(self, step: int) -> StepBatch:
        epoch, index = divmod(step, self.batches_per_epoch)
        plan = self.spec.plan(epoch, index, self.num_samples, self.image_hw)
        labels = None if self.labels is None else self.labels[plan.indices]
        return StepBatch(self.source.read(plan.indices), plan, labels)


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
    """A loader whose batches come from a stream of consecutive global steps, read by
    ``self.reader`` in ``workers`` processes (0: in the calling thread, handy for tests). The
    stream stays open while calls come in order and reopens at the asked position otherwise
    (a resume, a jump back to epoch 0 for evaluation)."""

    def __init__(self, images: np.ndarray | ImageSource, labels: np.ndarray | torch.Tensor | None, spec: BatchSpec,
                 device: torch.device | str, *, workers: int = DEFAULT_WORKERS) -> None:
        source = as_source(images)
        super().__init__(len(source), labels, spec, device, source.shape[1:3])
        self.workers = workers
        self.reader = PlannedReader(source, labels_array(labels), self)
        self.augmenter = Augmenter(spec.augmentation, spec.mean, self.image_hw, self.device)
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
            stream.close()  # drops the DataLoader iterator or the DALI pipeline: their workers exit

    def __del__(self) -> None:
        self.close()

    def _open_stream(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Batches of global steps step, step + 1, ... as (x, y) in the contract's format."""
        raise NotImplementedError


class TorchLoader(StreamingLoader):
    """Batches from ``workers`` DataLoader processes (0: in the calling process). Each item is a
    whole batch, read and augmented (uint8, CPU tensors) in a worker: 4x less to pin and copy
    than float. The main process copies it to the device and converts it (Cutout included)."""

    def _open_stream(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        pin = self.device.type == "cuda"
        loader = DataLoader(_AugmentedSteps(self.reader), batch_size=None, sampler=_StepsFrom(step),
                            num_workers=self.workers, pin_memory=pin,
                            prefetch_factor=PREFETCH_PER_WORKER if self.workers else None)
        return _on_device(loader, self.reader, step, self.device, self.augmenter)


def _on_device(loader: DataLoader, reader: PlannedReader, step: int, device: torch.device, augmenter: Augmenter):
    """The loader's uint8 batches (global steps ``step``, ``step + 1``, ...) as model input on ``device``.

    A plain function, not a method: a generator holding the loader would make a reference cycle,
    and the workers would then only stop when the garbage collector gets to it.
    """
    batches = iter(loader)
    while True:
        try:
            images, labels, cutout = next(batches)
        except Exception as e:  # a worker's exception, re-raised with its traceback in the message
            # Stop the workers now: drop every reference to the DataLoader iterator, ours and those
            # in the frames of the exception's traceback (which a test or a log may keep alive).
            traceback.clear_frames(e.__traceback__)
            del batches
            raise_user_error_behind(e, reader, range(step, step + 1))  # DataLoader keeps order
            raise
        cutout = None if cutout is None else cutout.to(device, non_blocking=True)
        x = augmenter.model_input(images.to(device, non_blocking=True), reader.spec.channels_last, cutout)
        yield x, (None if labels is None else labels.to(device, non_blocking=True))
        step += 1


class _AugmentedSteps(Dataset):
    """Item ``step``: that step's batch augmented, uint8 (b, H, W, 3), its labels and its Cutout
    centres (each None when there are none); Cutout itself is applied on the device."""

    def __init__(self, reader: PlannedReader) -> None:
        self.reader = reader
        self._augmenter: Augmenter | None = None  # built in the worker, on first use

    def __getstate__(self) -> dict:
        return {"reader": self.reader, "_augmenter": None}

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self._augmenter is None:
            spec = self.reader.spec
            self._augmenter = Augmenter(spec.augmentation, spec.mean, self.reader.image_hw, "cpu")
        batch = self.reader.read(step)
        plan = batch.plan

        def tensor(array):
            return None if array is None else torch.from_numpy(array)

        images = self._augmenter.pixels(torch.from_numpy(batch.images), torch.arange(len(plan)), tensor(plan.shift),
                                        tensor(plan.flip), tensor(plan.autoaugment))
        return images, tensor(batch.labels), tensor(plan.cutout)


class _StepsFrom(Sampler):
    """Global steps start, start + 1, ... without end (the loader stops asking)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)
