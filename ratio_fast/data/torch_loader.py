"""The "torch" loader: a DataLoader whose workers read and augment the planned batches.

Each item of the DataLoader is one whole batch (a global step), produced in a worker: the
planned rows are read from the source, cropped and flipped there with the gpu loader's own
gather (``augment.crop_flip`` on CPU tensors), and returned as uint8 (4x less to pin and copy
than float). The main process copies them to the device (asynchronously from pinned memory)
and converts them with ``augment.to_model_input``, so the output equals the gpu loader's.
"""

from __future__ import annotations

import itertools
import traceback
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ratio_fast.data.augment import crop_flip, to_model_input
from ratio_fast.data.streaming import PlannedReader, StreamingLoader, raise_user_error_behind

PREFETCH_PER_WORKER = 2


class TorchLoader(StreamingLoader):
    """Batches from ``workers`` DataLoader processes (0: in the calling process).

    Arguments and output: see ``loader.Loader``; ``images`` is an array, memmap or ImageSource.
    """

    def _open_stream(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        pin = self.device.type == "cuda"
        loader = DataLoader(_AugmentedSteps(self.reader), batch_size=None, sampler=_StepsFrom(step), num_workers=self.workers,
                            pin_memory=pin, prefetch_factor=PREFETCH_PER_WORKER if self.workers else None)
        return _on_device(loader, self.reader, step, self.device, self.channels_last)

    def _close_stream(self, stream: Iterator) -> None:
        stream.close()  # drops the DataLoader iterator: its workers exit


def _on_device(loader: DataLoader, reader: PlannedReader, step: int, device: torch.device, channels_last: bool):
    """The loader's uint8 batches (global steps ``step``, ``step + 1``, ...) as model input on ``device``.

    A plain function, not a method: a generator holding ``self`` would make a reference cycle,
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
        x = to_model_input(images.to(device, non_blocking=True), channels_last, cutout)
        yield x, (None if labels is None else labels.to(device, non_blocking=True))
        step += 1


class _AugmentedSteps(Dataset):
    """Item ``step``: that step's batch cropped and flipped, uint8 (b, 32, 32, 3), its labels and
    its cutout centres (each None when there are none); the cutout itself is cut on the device."""

    def __init__(self, reader: PlannedReader) -> None:
        self.reader = reader

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        batch = self.reader.read(step)
        images = torch.from_numpy(batch.images)
        if self.reader.augment:
            images = crop_flip(images, torch.arange(len(images)), torch.from_numpy(batch.shift),
                               torch.from_numpy(batch.flip))
        labels = None if batch.labels is None else torch.from_numpy(batch.labels)
        cutout = None if batch.cutout is None else torch.from_numpy(batch.cutout)
        return images, labels, cutout


class _StepsFrom(Sampler):
    """Global steps start, start + 1, ... without end (the loader stops asking)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)
