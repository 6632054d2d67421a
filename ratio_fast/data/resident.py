"""The "gpu" loader kind: the whole uint8 set on the device (the cifar10-airbench idea: CIFAR-10 is
150 MB, the 300K random images 0.9 GB).

The epoch's plan is uploaded once; a batch is slices, gathers and the batched augmentation, with
no host synchronization. It is also the evaluation loader (``BatchSpec.in_order``), and the
reference the other kinds are compared with: its augmentation is checked against PIL
(tests/test_data_autoaugment.py, tests/test_data_augment.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ratio_fast.data.augment import Augmenter
from ratio_fast.data.batches import BatchSpec, Loader, labels_array
from ratio_fast.data.plan import plan_epoch
from ratio_fast.data.sources import ImageSource, as_source
from ratio_fast.errors import UserError

# Largest set (decoded uint8) the gpu loader uploads: CIFAR and the 300K random images fit
# many times over, the 244 GB Tiny Images file does not.
DEVICE_RESIDENT_MAX_BYTES = 8 << 30
# Host memory per chunk while a memory-mapped set moves to the device (never all of it at once).
_UPLOAD_CHUNK_BYTES = 64 << 20


class ResidentLoader(Loader):
    """Batches from a device-resident copy of ``images`` (array, memmap, uint8 tensor or ImageSource).

    Sets above ``max_bytes`` are refused: they belong to the streaming loaders (dali, torch).
    """

    def __init__(self, images: np.ndarray | torch.Tensor | ImageSource, labels: np.ndarray | torch.Tensor | None,
                 spec: BatchSpec, device: torch.device | str, *, max_bytes: int = DEVICE_RESIDENT_MAX_BYTES) -> None:
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
        super().__init__(len(images), labels, spec, device, tuple(images.shape[1:3]))
        self.images = _upload_images(images, self.device)  # (N, H, W, 3) uint8, on the device
        labels = labels_array(labels)
        self.labels = None if labels is None else torch.from_numpy(labels).to(self.device)
        self.augmenter = Augmenter(spec.augmentation, spec.mean, self.image_hw, self.device)
        self._plan_epoch: int | None = None
        self._plan: dict[str, torch.Tensor] = {}

    def first(self, n: int) -> "ResidentLoader":
        """The same loader over the first ``n`` images (sharing their device copy): only for
        loaders in order (``BatchSpec.in_order``), where those are the first batches."""
        if self.spec.shuffle:
            raise ValueError("first(n) of a shuffled loader would not be its first batches")
        n = min(n, self.num_samples)
        return ResidentLoader(self.images[:n], None if self.labels is None else self.labels[:n], self.spec, self.device)

    def _make_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.spec
        lo = index * s.batch_size + s.rank * s.local_batch_size
        part = {name: column[lo:min(lo + s.local_batch_size, self.num_samples)]
                for name, column in self._epoch_plan(epoch).items()}
        rows = part["indices"]
        x = self.augmenter.pixels(self.images, rows, part.get("shift"), part.get("flip"), part.get("autoaugment"))
        y = None if self.labels is None else self.labels[rows]
        return self.augmenter.model_input(x, s.channels_last, part.get("cutout")), y

    def _epoch_plan(self, epoch: int) -> dict[str, torch.Tensor]:
        # Only the current epoch is kept: the trainer walks epochs in order.
        if self._plan_epoch != epoch:
            s = self.spec
            plan = plan_epoch(s.seed, epoch, self.num_samples, s.shuffle, s.draws, self.image_hw)
            columns = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
            columns = {name: c.reshape(len(c), -1) for name, c in columns.items() if c is not None}
            packed = torch.from_numpy(np.concatenate(list(columns.values()), axis=1)).to(self.device)  # one copy
            widths = np.cumsum([0] + [c.shape[1] for c in columns.values()])
            self._plan = {name: packed[:, a] if b - a == 1 else packed[:, a:b]
                          for name, a, b in zip(columns, widths[:-1], widths[1:])}
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
