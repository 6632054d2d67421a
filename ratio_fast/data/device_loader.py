"""A data loader that keeps the whole uint8 data set on the device (the cifar10-airbench idea).

CIFAR-10 is 150 MB as uint8 and the 300K random images 0.9 GB: both fit on a GPU, so there
is no worker process, no host-to-device copy per batch and no pinned-memory staging. Crops
and flips are done batched on the device by one gather.

Determinism and resume: everything random about an epoch (the order, the crop offsets, the
flips) is drawn at once from a CPU ``torch.Generator`` seeded by (seed, epoch), copied to the
device in one transfer and cached. Batch (epoch, index) is therefore a pure function of
(seed, epoch, index), on any device: a run resumed mid-epoch sees the same batches, and the
random draws do not depend on how many batches were taken before.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

PAD = 4  # random-crop padding in pixels (zeros), as in the RATIO and standard CIFAR recipes

# Host memory used per chunk while moving a memory-mapped array to the device, so that a
# 0.9 GB .npy file is never materialized in host RAM all at once.
_UPLOAD_CHUNK_BYTES = 64 << 20


class DeviceLoader:
    """Batches of float32 images in [0,1], (B, 3, H, W), and int64 labels, from device memory.

    ``images`` is uint8 (N, H, W, 3) (numpy, memmap or tensor), ``labels`` (N,) integers or
    ``None`` for unlabelled data (then ``y`` is ``None``). ``len(loader)`` is the number of
    batches per epoch. With ``augment``: random crop with ``PAD``-pixel zero padding (each
    axis's shift uniform over its 2*PAD+1 offsets) and horizontal flip with probability 1/2.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor | None,
        batch_size: int,
        device: torch.device | str,
        *,
        seed: int,
        augment: bool = True,
        shuffle: bool = True,
        drop_last: bool = True,
        channels_last: bool = False,
    ) -> None:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3), got shape {tuple(images.shape)}")
        if images.dtype != (torch.uint8 if torch.is_tensor(images) else np.uint8):
            raise ValueError(f"images must be uint8, got {images.dtype}")
        n = images.shape[0]
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if n == 0 or (drop_last and n < batch_size):
            raise ValueError(f"{n} images make no batch of {batch_size} (drop_last={drop_last})")
        if labels is not None and tuple(labels.shape) != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.num_samples = n
        self.images = _upload_images(images, self.device)  # (N, H, W, 3) uint8, on device
        self.labels = (None if labels is None
                       else torch.as_tensor(np.asarray(labels, dtype=np.int64) if not torch.is_tensor(labels)
                                            else labels).to(self.device, torch.int64))
        self._plan_epoch: int | None = None
        self._plan: _EpochPlan | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The batches of epoch 0; use ``epoch(e)`` for the others."""
        return self.epoch(0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield the batches of ``epoch`` from batch index ``start`` on (to resume mid-epoch)."""
        for index in range(start, len(self)):
            yield self.batch(epoch, index)

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch ``index`` of ``epoch``: x float32 (B,3,H,W) in [0,1], y int64 (B,) or None.

        No host synchronization: all indexing tensors already live on the device.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches per epoch")
        plan = self._epoch_plan(epoch)
        lo, hi = index * self.batch_size, min((index + 1) * self.batch_size, self.num_samples)
        order = plan.order[lo:hi]

        if self.augment:
            x = _crop_flip(self.images, order, plan.shift[lo:hi], plan.flip[lo:hi])
        else:
            x = self.images[order]
        # NHWC uint8 viewed as NCHW is channels_last already; .float() keeps the strides.
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        y = None if self.labels is None else self.labels[order]
        return x, y

    def _epoch_plan(self, epoch: int) -> _EpochPlan:
        # Only the current epoch is cached: the trainer walks epochs in order.
        if self._plan_epoch != epoch:
            self._plan = _EpochPlan.draw(self.seed, epoch, self.num_samples, self.device,
                                         shuffle=self.shuffle)
            self._plan_epoch = epoch
        return self._plan


class _EpochPlan:
    """The random choices of one epoch, on the device, indexed by position in the epoch.

    order[i] is the image at position i; shift[i] = (dy, dx) in [0, 2*PAD]; flip[i] in {0, 1}.
    """

    def __init__(self, order: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor) -> None:
        self.order, self.shift, self.flip = order, shift, flip

    @classmethod
    def draw(cls, seed: int, epoch: int, n: int, device: torch.device, *, shuffle: bool) -> _EpochPlan:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        gen = torch.Generator(device="cpu")
        gen.manual_seed(_epoch_seed(seed, epoch))
        # Always draw all three, in this order, so the crops and flips of an epoch do not
        # depend on the shuffle flag.
        perm = torch.randperm(n, generator=gen)
        shift = torch.randint(0, 2 * PAD + 1, (n, 2), generator=gen)
        flip = torch.randint(0, 2, (n,), generator=gen)
        order = perm if shuffle else torch.arange(n)
        # One host-to-device copy for the whole epoch.
        packed = torch.cat([order[:, None], shift, flip[:, None]], dim=1).to(device)
        return cls(packed[:, 0], packed[:, 1:3], packed[:, 3])


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit generator seed from (seed, epoch); neighbours are unrelated."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _crop_flip(images: torch.Tensor, order: torch.Tensor, shift: torch.Tensor,
               flip: torch.Tensor) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip, as one gather on the device.

    Output pixel (i, j) of sample b comes from image order[b] at row i + dy - PAD and column
    j' + dx - PAD, where j' = W-1-j when flipped; sources outside the image are the padding
    zeros. (Cropping the padded image then flipping is the same as this.)
    """
    h, w = images.shape[1], images.shape[2]
    dev = images.device
    rows = torch.arange(h, device=dev) + (shift[:, :1] - PAD)  # (B, H)
    cols = torch.arange(w, device=dev).expand(len(order), w)
    cols = torch.where(flip[:, None].bool(), (w - 1) - cols, cols) + (shift[:, 1:] - PAD)  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    x = images[order[:, None, None], rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    return x * inside[..., None].to(x.dtype)  # (B, H, W, 3), padding pixels zeroed


def _upload_images(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy uint8 NHWC images to ``device`` once, in chunks (memmaps stay on disk meanwhile)."""
    if torch.is_tensor(images):
        return images.to(device).contiguous()
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    per_chunk = max(1, _UPLOAD_CHUNK_BYTES // max(1, int(np.prod(images.shape[1:]))))
    for lo in range(0, len(images), per_chunk):
        # np.array copies: the source may be a read-only memmap, which torch cannot wrap.
        chunk = torch.from_numpy(np.array(images[lo:lo + per_chunk], dtype=np.uint8, copy=True))
        out[lo:lo + per_chunk].copy_(chunk)
    return out
