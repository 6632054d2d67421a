"""The loaders: one ``BatchSpec``, three kinds that give the same batches, and ``auto``'s choice.

The contract every kind keeps:
- ``len(loader)``: global batches per epoch (the same on every rank).
- ``loader.batch(epoch, index) -> (x, y)``: x float32 (B / world_size, 3, H, W) in [0, 1] on the
  loader's device (channels_last memory if asked), y int64 labels or ``None`` for an unlabelled
  set; a pure function of (seed, epoch, index) (``plan.py``), augmented as ``spec.augment`` says
  (``augment.Augmenter``).
- ``loader.epoch(e, start=0)`` yields the batches of epoch ``e`` from ``start`` on; iterating the
  loader gives epoch 0.

The kinds differ in where the work happens:
- ``gpu`` (``ResidentLoader``): the whole uint8 set on the device (the cifar10-airbench idea:
  CIFAR-10 is 150 MB, the 300K random images 0.9 GB); the epoch's plan is uploaded once, a
  batch is slices, gathers and the batched augmentation, with no host synchronization. It is
  also the evaluation loader (``BatchSpec.in_order``).
- ``torch`` (``TorchLoader``): DataLoader workers read the planned rows and run the same torch
  augmentation on CPU tensors; uint8 batches are copied to the device (pinned, asynchronous).
- ``dali`` (``dali.DaliLoader``): DALI's operators and its automatic-augmentation support do the
  augmentation, fed by parallel workers (bit-identical up to AutoAugment, see ``dali.py``).

``auto`` (``choose_loader_kind``): the candidates are the kinds that can hold the set: ``gpu``
when it fits ``DEVICE_RESIDENT_MAX_BYTES`` (decoded uint8) and needs no decoding, ``dali`` when
DALI is installed, and ``torch``. On a CUDA device they are measured (a few sequential batches
of each on the real source, after a warm-up), the fastest wins and is kept in a JSON cache
(``loader_choice.json`` in ``measure.cache_dir()``) keyed by what decides it. Elsewhere the
first candidate wins unmeasured: on a CPU a resident batch is the same work in the training
process that the streaming kinds do in workers plus a copy.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ratio_fast.data.augment import AUGMENTATIONS, Augmenter
from ratio_fast.data.plan import BatchPlan, Draws, batches_per_epoch, check_sharding, plan_batch, plan_epoch
from ratio_fast.data.sources import ImageSource, as_source
from ratio_fast.datasets import CIFAR10
from ratio_fast.errors import UserError
from ratio_fast.measure import Timer, cache_dir, device_timer, fastest, setting_key

LOADER_KINDS = ("gpu", "dali", "torch")
LOADER_CHOICES = ("auto", *LOADER_KINDS)

# Largest set (decoded uint8) the gpu loader uploads: CIFAR and the 300K random images fit
# many times over, the 244 GB Tiny Images file does not.
DEVICE_RESIDENT_MAX_BYTES = 8 << 30
# Host memory per chunk while a memory-mapped set moves to the device (never all of it at once).
_UPLOAD_CHUNK_BYTES = 64 << 20
# Worker processes per stream when the caller does not say: DALI and DataLoader workers both
# spend their time in numpy slicing, augmentation and (for folders) decoding.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
PREFETCH_PER_WORKER = 2


@dataclass(frozen=True)
class BatchSpec:
    """What a loader produces, whichever its kind: the loaders' one set of options."""

    batch_size: int  # global, over all ranks; each rank gets batch_size // world_size
    seed: int = 0
    augment: str = "autoaugment_cutout"  # or crop_flip, none (augment.Augmenter)
    mean: tuple[float, float, float] = CIFAR10.mean  # the data set's mean colour: autoaugment_cutout's fill
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
    def draws(self) -> Draws:
        authors = self.augment == "autoaugment_cutout"
        return Draws(crop_flip=self.augment != "none", autoaugment=authors, cutout=authors)


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

    def plan(self, epoch: int, index: int) -> BatchPlan:
        """Which rows and draws this rank's part of batch (epoch, index) holds."""
        s = self.spec
        return plan_batch(s.seed, epoch, index, batch_size=s.batch_size, num_samples=self.num_samples,
                          shuffle=s.shuffle, draws=s.draws, image_hw=self.image_hw, rank=s.rank,
                          world_size=s.world_size)

    def _make_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


def labels_array(labels: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
    """Labels as a host int64 array (or None)."""
    if labels is None:
        return None
    if torch.is_tensor(labels):
        return labels.detach().cpu().numpy().astype(np.int64)
    return np.asarray(labels, dtype=np.int64)


# ---- gpu: the whole set on the device ------------------------------------------------------


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
        self.augmenter = Augmenter(spec.augment, spec.mean, self.image_hw, self.device)
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


# ---- streaming: workers read (and augment) ahead ---------------------------------------------


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
        s = self.spec
        plan = plan_batch(s.seed, epoch, index, batch_size=s.batch_size, num_samples=self.num_samples,
                          shuffle=s.shuffle, draws=s.draws, image_hw=self.image_hw, rank=s.rank,
                          world_size=s.world_size)
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
        self.augmenter = Augmenter(spec.augment, spec.mean, self.image_hw, self.device)
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
            self._augmenter = Augmenter(spec.augment, spec.mean, self.reader.image_hw, "cpu")
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


# ---- choosing a kind -------------------------------------------------------------------------


LOADER_CHOICE_CACHE = "loader_choice.json"  # file name, in the attack schedule cache's folder
# Batches per timed call, as many as the torch loader prefetches by default: the calls follow
# one another, so a timed call mostly waits for batches prepared while it runs (the steady rate).
MEASURED_BATCHES = 8


def make_loader(kind: str, images: np.ndarray | torch.Tensor | ImageSource, labels: np.ndarray | torch.Tensor | None,
                spec: BatchSpec, device: torch.device | str, *, workers: int | None = None) -> Loader:
    """A loader of ``kind`` (``auto``, ``gpu``, ``dali`` or ``torch``) for ``spec``; ``workers``
    (streaming kinds only) defaults to ``DEFAULT_WORKERS``."""
    kind = choose_loader_kind(kind, images, device, spec, workers=workers).kind
    if kind == "gpu":
        return ResidentLoader(images, labels, spec, device)
    options = {} if workers is None else {"workers": workers}
    if kind == "dali":
        from ratio_fast.data.dali import DaliLoader

        return DaliLoader(images, labels, spec, device, **options)
    return TorchLoader(images, labels, spec, device, **options)


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


def choose_loader_kind(kind: str, images: np.ndarray | torch.Tensor | ImageSource, device: torch.device | str,
                       spec: BatchSpec | None = None, *, workers: int | None = None,
                       timer: Timer | None = None, cache: str | Path | None = None) -> LoaderChoice:
    """The loader kind ``kind`` stands for with these images on ``device``, as the module says.

    ``auto`` measures (on CUDA, or on any device when ``timer`` is given: tests inject one) the
    loaders ``make_loader`` would build for ``spec``, unlabelled (labels cost 8 bytes an image),
    and keeps the answer in ``cache`` (default: ``default_loader_cache_path()``). Without a
    ``spec`` there is nothing to measure and the first candidate wins.
    """
    if kind not in LOADER_CHOICES:
        raise UserError(f"--loader: unknown loader {kind!r}; choose one of {', '.join(LOADER_CHOICES)}")
    if kind != "auto":
        return LoaderChoice(kind)
    source = images if torch.is_tensor(images) else as_source(images)
    candidates = auto_candidates(source)
    device = torch.device(device)
    if len(candidates) == 1 or spec is None or (timer is None and device.type != "cuda"):
        return LoaderChoice(candidates[0])

    measured_spec = dataclasses.replace(spec, seed=0, drop_last=len(source) >= spec.batch_size)
    time_kind = timer or device_timer(device)  # timed: a call that loads MEASURED_BATCHES batches

    def seconds_per_batch(candidate: str) -> float:
        loader = make_loader(candidate, images, None, measured_spec, device, workers=workers)
        try:
            return time_kind(candidate, _next_batches(loader, MEASURED_BATCHES)) / MEASURED_BATCHES
        finally:
            if hasattr(loader, "close"):  # streaming loaders own worker processes
                loader.close()

    path = Path(cache) if cache is not None else default_loader_cache_path()
    found = fastest(_choice_key(source, device, spec, candidates, workers), seconds_per_batch, candidates, path)
    rates = {name: spec.local_batch_size / (ms / 1e3) for name, ms in found.timings_ms.items()}
    return LoaderChoice(found.best, rates, found.cached, path)


def auto_candidates(source: torch.Tensor | ImageSource) -> tuple[str, ...]:
    """The kinds that can hold ``source``, in the order of the unmeasured rule (first: fastest)."""
    size = source.numel() if torch.is_tensor(source) else source.nbytes
    fits_device = not getattr(source, "decodes", False) and size <= DEVICE_RESIDENT_MAX_BYTES
    return ("gpu",) * fits_device + ("dali",) * dali_available() + ("torch",)


def dali_available() -> bool:
    """Whether nvidia-dali (the ``nvidia-dali-cuda130`` wheel) is installed; imports nothing."""
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


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


def _choice_key(source, device: torch.device, spec: BatchSpec, candidates: tuple[str, ...], workers: int | None) -> str:
    return setting_key(
        device, f"{type(source).__name__} {len(source)} images {tuple(source.shape[1:])}",
        f"batch {spec.batch_size} on {spec.world_size} ranks", f"augment {spec.augment}",
        f"channels_last {spec.channels_last}", f"workers {workers if workers is not None else 'default'}",
        f"candidates {' '.join(candidates)}",
    )
