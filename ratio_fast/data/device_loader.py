"""The "gpu" loader: the whole uint8 data set in device memory (the cifar10-airbench idea).

CIFAR-10 is 150 MB as uint8 and the 300K random images 0.9 GB: both fit on a GPU, so there
is no worker process, no host-to-device copy per batch and no pinned-memory staging. Crops
and flips are done batched on the device by one gather (``augment.crop_flip``).

The plan of an epoch (``plan.py``: order, crop shifts, flips of every position) is computed
on the host once per epoch and copied to the device in one transfer; a batch is then slices
and one gather, with no host synchronization. Sets larger than ``max_bytes`` are refused:
they belong to the streaming loaders (dali, torch).
"""

from __future__ import annotations

import numpy as np
import torch

from ratio_fast.data.augment import crop_flip, to_model_input
from ratio_fast.data.image_source import ImageSource, as_source
from ratio_fast.data.loader import Loader, labels_array
from ratio_fast.data.plan import plan_epoch
from ratio_fast.errors import UserError

# Largest set (decoded uint8) the gpu loader uploads: CIFAR and the 300K random images fit
# many times over, the 244 GB Tiny Images file does not. Override with ``max_bytes``.
DEVICE_RESIDENT_MAX_BYTES = 8 << 30

# Host memory used per chunk while moving a memory-mapped set to the device, so that a
# 0.9 GB .npy file is never materialized in host RAM all at once.
_UPLOAD_CHUNK_BYTES = 64 << 20


class DeviceLoader(Loader):
    """Batches from a device-resident copy of ``images`` (array, memmap, tensor or ImageSource).

    Arguments and output: see ``loader.Loader``. With ``augment``: random crop with 4-pixel
    zero padding (each axis's shift uniform over its 9 offsets) and horizontal flip with
    probability 1/2. With ``cutout``: a 16x16 square zeroed per image.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor | ImageSource,
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
        max_bytes: int = DEVICE_RESIDENT_MAX_BYTES,
    ) -> None:
        if torch.is_tensor(images):
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
                raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        else:
            images = as_source(images)
        num_bytes = images.numel() if torch.is_tensor(images) else images.nbytes
        if num_bytes > max_bytes:
            raise UserError(f"--loader gpu: the data set is {num_bytes / 2**30:.1f} GiB as uint8, more than "
                            f"the {max_bytes / 2**30:.1f} GiB the gpu loader keeps on the device; "
                            f"use --loader dali or --loader torch")
        super().__init__(len(images), labels, batch_size, device, seed=seed, augment=augment, shuffle=shuffle,
                         drop_last=drop_last, channels_last=channels_last, rank=rank, world_size=world_size,
                         cutout=cutout, image_hw=tuple(images.shape[1:3]))
        self.images = _upload_images(images, self.device)  # (N, 32, 32, 3) uint8, on device
        labels = labels_array(labels)
        self.labels = None if labels is None else torch.from_numpy(labels).to(self.device)
        self._plan_epoch: int | None = None
        self._plan: torch.Tensor | None = None  # (N, 4 or 6): order, dy, dx, flip[, cutout cy, cx]

    def _make_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        plan = self._epoch_plan(epoch)
        lo = index * self.batch_size + self.rank * self.local_batch_size
        part = plan[lo:min(lo + self.local_batch_size, self.num_samples)]
        rows = part[:, 0]
        x = crop_flip(self.images, rows, part[:, 1:3], part[:, 3]) if self.augment else self.images[rows]
        y = None if self.labels is None else self.labels[rows]
        cutout = part[:, 4:6] if self.cutout else None
        return to_model_input(x, self.channels_last, cutout), y

    def _epoch_plan(self, epoch: int) -> torch.Tensor:
        # Only the current epoch is kept: the trainer walks epochs in order.
        if self._plan_epoch != epoch:
            plan = plan_epoch(self.seed, epoch, self.num_samples, self.shuffle, self.cutout_hw)
            columns = [plan.indices[:, None], plan.shift, plan.flip[:, None]]
            packed = np.concatenate(columns + ([plan.cutout] if plan.cutout is not None else []), axis=1)
            self._plan = torch.from_numpy(packed).to(self.device)  # one host-to-device copy
            self._plan_epoch = epoch
        return self._plan


def _upload_images(images: torch.Tensor | ImageSource, device: torch.device) -> torch.Tensor:
    """Copy the uint8 NHWC images to ``device`` once, in chunks (memmaps stay on disk meanwhile)."""
    if torch.is_tensor(images):
        return images.to(device).contiguous()
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    per_chunk = max(1, _UPLOAD_CHUNK_BYTES // (images.nbytes // len(images)))
    for lo in range(0, len(images), per_chunk):
        rows = np.arange(lo, min(lo + per_chunk, len(images)))
        out[lo:lo + len(rows)].copy_(torch.from_numpy(images.read(rows)))
    return out
