"""Choosing a loader: ``make_loader(kind, ...)`` for ``--loader {auto,gpu,dali,torch}``.

The three kinds keep one contract (``loader.py``) and give identical batches; they differ in
where the work happens:
- ``gpu``: the whole uint8 set on the device, one gather per batch (``device_loader.py``);
- ``dali``: DALI crops and flips, parallel workers read rows (``dali_loader.py``);
- ``torch``: DataLoader workers read and crop, pinned copies (``torch_loader.py``).

The ``auto`` rule (``resolve_loader_kind``): ``gpu`` when the set fits the gpu loader's
budget (``DEVICE_RESIDENT_MAX_BYTES``, decoded uint8) and needs no decoding, else ``dali`` when
DALI is installed, else ``torch``. Why: with the set resident, a batch costs one gather and no
host work, which the streaming loaders cannot beat; sets that do not fit (Tiny Images) or must
be decoded (image folders) stream, and DALI streamed faster than DataLoader workers. The
measurements behind the rule are bench/test_bench_loaders.py (numbers in its docstring).
"""

from __future__ import annotations

import numpy as np
import torch

from ratio_fast.data.dali_loader import DaliLoader, dali_available
from ratio_fast.data.device_loader import DEVICE_RESIDENT_MAX_BYTES, DeviceLoader
from ratio_fast.data.image_source import ImageSource, as_source
from ratio_fast.data.loader import Loader
from ratio_fast.data.torch_loader import TorchLoader
from ratio_fast.errors import UserError

LOADER_KINDS = ("gpu", "dali", "torch")
LOADER_CHOICES = ("auto", *LOADER_KINDS)


def resolve_loader_kind(kind: str, images: np.ndarray | ImageSource, device: torch.device | str) -> str:
    """The loader kind ``auto`` stands for with these images on ``device`` (others pass through)."""
    if kind not in LOADER_CHOICES:
        raise UserError(f"--loader: unknown loader {kind!r}; choose one of {', '.join(LOADER_CHOICES)}")
    if kind != "auto":
        return kind
    source = images if torch.is_tensor(images) else as_source(images)
    size = source.numel() if torch.is_tensor(source) else source.nbytes
    if not getattr(source, "decodes", False) and size <= DEVICE_RESIDENT_MAX_BYTES:
        return "gpu"
    if dali_available():
        return "dali"
    return "torch"


def make_loader(
    kind: str,
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
    workers: int | None = None,
) -> Loader:
    """A loader of ``kind`` (``auto``, ``gpu``, ``dali`` or ``torch``); arguments as in ``loader.Loader``.

    ``batch_size`` is the global batch; each rank gets ``batch_size // world_size`` of it.
    ``workers`` (streaming kinds only) defaults to ``streaming.DEFAULT_WORKERS``.
    """
    kind = resolve_loader_kind(kind, images, device)
    common = dict(seed=seed, augment=augment, shuffle=shuffle, drop_last=drop_last,
                  channels_last=channels_last, rank=rank, world_size=world_size)
    if kind == "gpu":
        return DeviceLoader(images, labels, batch_size, device, **common)
    if workers is not None:
        common["workers"] = workers
    loader_class = DaliLoader if kind == "dali" else TorchLoader
    return loader_class(images, labels, batch_size, device, **common)
