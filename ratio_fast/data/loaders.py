"""Choosing a loader: ``make_loader(kind, ...)`` for ``--loader {auto,gpu,dali,torch}``.

The three kinds keep one contract (``loader.py``) and give identical batches; they differ in
where the work happens:
- ``gpu``: the whole uint8 set on the device, one gather per batch (``device_loader.py``);
- ``dali``: DALI crops and flips, parallel workers read rows (``dali_loader.py``);
- ``torch``: DataLoader workers read and crop, pinned copies (``torch_loader.py``).

``auto`` (``choose_loader_kind``): the candidates are the kinds that can hold the set: ``gpu``
when it fits the gpu loader's budget (``DEVICE_RESIDENT_MAX_BYTES``, decoded uint8) and needs
no decoding, ``dali`` when DALI is installed, and ``torch``.
- On a CUDA device the candidates are measured: a few sequential batches of each on the real
  source (after a warm-up), the fastest wins, and the answer is kept in a JSON cache
  (``loader_choice.json`` in ``measure.cache_dir()``, with the attack schedule's), keyed by what decides it (GPU, set size and shape, batch, ranks,
  augmentation, memory format, torch version), so later and resumed runs read it.
- Elsewhere the first candidate wins without measuring (the order above): on a CPU device a
  batch of the resident loader is one gather in the training process, while the streaming
  loaders do the same gather in workers plus a copy, so the resident loader is always fastest.
bench/test_bench_loaders.py measures the three kinds (numbers in its docstring).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ratio_fast.data.dali_loader import DaliLoader, dali_available
from ratio_fast.data.device_loader import DEVICE_RESIDENT_MAX_BYTES, DeviceLoader
from ratio_fast.data.image_source import ImageSource, as_source
from ratio_fast.data.loader import Loader
from ratio_fast.data.torch_loader import TorchLoader
from ratio_fast.errors import UserError
from ratio_fast.measure import cache_dir, fastest, time_call

LOADER_KINDS = ("gpu", "dali", "torch")
LOADER_CHOICES = ("auto", *LOADER_KINDS)

LOADER_CHOICE_CACHE = "loader_choice.json"  # file name, in the attack schedule cache's folder
# Batches per timed call, as many as the torch loader prefetches by default: the calls follow
# one another, so a timed call mostly waits for batches prepared while it runs (the steady rate).
MEASURED_BATCHES = 8

# loader_timer(kind, run) -> seconds per call of run(), which loads MEASURED_BATCHES batches of `kind`.
LoaderTimer = Callable[[str, Callable[[], object]], float]


@dataclass
class LoaderChoice:
    """The loader kind to use and, when ``auto`` measured (now or in an earlier run), the rates."""

    kind: str
    images_per_s: dict[str, float] = field(default_factory=dict)  # per measured kind, on one rank
    cached: bool = False  # read from the cache rather than measured now
    cache_path: Path | None = None

    @property
    def measured(self) -> bool:
        return bool(self.images_per_s)

    def describe(self) -> str:
        """One line for the run log, e.g. ``loader auto: dali 48k img/s, torch 23k img/s -> dali (...)``."""
        if not self.measured:
            return f"loader: {self.kind}"
        rates = sorted(self.images_per_s.items(), key=lambda item: -item[1])
        measured = ", ".join(f"{kind} {rate / 1e3:.3g}k img/s" for kind, rate in rates)
        origin = f"read from {self.cache_path}" if self.cached else f"measured now, cached in {self.cache_path}"
        return f"loader auto: {measured} -> {self.kind} ({origin})"


def resolve_loader_kind(kind: str, images: np.ndarray | ImageSource, device: torch.device | str,
                        **choice_options) -> str:
    """The loader kind ``auto`` stands for (others pass through); see ``choose_loader_kind``."""
    return choose_loader_kind(kind, images, device, **choice_options).kind


def choose_loader_kind(
    kind: str,
    images: np.ndarray | ImageSource,
    device: torch.device | str,
    *,
    batch_size: int | None = None,
    augment: bool = True,
    cutout: bool = False,
    channels_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    workers: int | None = None,
    timer: LoaderTimer | None = None,
    cache: str | Path | None = None,
) -> LoaderChoice:
    """The loader kind ``kind`` stands for with these images on ``device``, as the module says.

    ``auto`` measures (on CUDA, or on any device when ``timer`` is given: tests inject one) the
    loaders ``make_loader`` would build with these arguments, unlabelled (labels cost 8 bytes
    an image), and keeps the answer in ``cache`` (default: ``default_loader_cache_path()``).
    Without ``batch_size`` there is nothing to measure and the first candidate wins.
    """
    if kind not in LOADER_CHOICES:
        raise UserError(f"--loader: unknown loader {kind!r}; choose one of {', '.join(LOADER_CHOICES)}")
    if kind != "auto":
        return LoaderChoice(kind)
    source = images if torch.is_tensor(images) else as_source(images)
    candidates = auto_candidates(source)
    device = torch.device(device)
    if len(candidates) == 1 or batch_size is None or (timer is None and device.type != "cuda"):
        return LoaderChoice(candidates[0])

    options = dict(augment=augment, cutout=cutout, channels_last=channels_last, rank=rank,
                   world_size=world_size, workers=workers)
    time_kind = timer or (lambda name, run: time_call(run, device))

    def seconds_per_batch(candidate: str) -> float:
        loader = make_loader(candidate, images, None, batch_size, device, seed=0,
                             drop_last=len(source) >= batch_size, **options)
        try:
            return time_kind(candidate, _next_batches(loader, MEASURED_BATCHES)) / MEASURED_BATCHES
        finally:
            if hasattr(loader, "close"):  # streaming loaders own worker processes
                loader.close()

    path = Path(cache) if cache is not None else default_loader_cache_path()
    key = _choice_key(source, device, batch_size, candidates, augment=augment, cutout=cutout,
                      channels_last=channels_last, world_size=world_size, workers=workers)
    found = fastest(key, seconds_per_batch, candidates, path)
    images_per_batch = batch_size // world_size
    rates = {name: images_per_batch / (ms / 1e3) for name, ms in found.timings_ms.items()}
    return LoaderChoice(found.best, rates, found.cached, path)


def auto_candidates(source: torch.Tensor | ImageSource) -> tuple[str, ...]:
    """The kinds that can hold ``source``, in the order of the unmeasured rule (first: fastest)."""
    size = source.numel() if torch.is_tensor(source) else source.nbytes
    fits_device = not getattr(source, "decodes", False) and size <= DEVICE_RESIDENT_MAX_BYTES
    return ("gpu",) * fits_device + ("dali",) * dali_available() + ("torch",)


def default_loader_cache_path() -> Path:
    """``loader_choice.json`` in the measurement cache folder ($RATIO_FAST_CACHE_DIR or ~/.cache/ratio-fast)."""
    return cache_dir() / LOADER_CHOICE_CACHE


def _next_batches(loader: Loader, count: int) -> Callable[[], None]:
    """A call that loads the loader's next ``count`` batches, in order across epochs, each call on."""
    steps = itertools.count()

    def load() -> None:
        for _ in range(count):
            loader.batch(*divmod(next(steps), len(loader)))

    return load


def _choice_key(source, device: torch.device, batch_size: int, candidates: tuple[str, ...], *, augment: bool,
                cutout: bool, channels_last: bool, world_size: int, workers: int | None) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return " | ".join([
        where, f"{type(source).__name__} {len(source)} images {tuple(source.shape[1:])}",
        f"batch {batch_size} on {world_size} ranks", f"augment {augment}", f"cutout {cutout}",
        f"channels_last {channels_last}", f"workers {workers if workers is not None else 'default'}",
        f"candidates {' '.join(candidates)}", f"torch {torch.__version__}",
    ])


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
    cutout: bool = False,
    workers: int | None = None,
) -> Loader:
    """A loader of ``kind`` (``auto``, ``gpu``, ``dali`` or ``torch``); arguments as in ``loader.Loader``.

    ``batch_size`` is the global batch; each rank gets ``batch_size // world_size`` of it.
    ``workers`` (streaming kinds only) defaults to ``streaming.DEFAULT_WORKERS``. ``cutout``:
    one 16x16 square zeroed per image (``augment.to_model_input``), with or without ``augment``.
    """
    kind = resolve_loader_kind(kind, images, device, batch_size=batch_size, augment=augment, cutout=cutout,
                               channels_last=channels_last, rank=rank, world_size=world_size, workers=workers)
    common = dict(seed=seed, augment=augment, shuffle=shuffle, drop_last=drop_last,
                  channels_last=channels_last, rank=rank, world_size=world_size, cutout=cutout)
    if kind == "gpu":
        return DeviceLoader(images, labels, batch_size, device, **common)
    if workers is not None:
        common["workers"] = workers
    loader_class = DaliLoader if kind == "dali" else TorchLoader
    return loader_class(images, labels, batch_size, device, **common)
