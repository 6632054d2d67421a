"""Which loader: the builder table of the loader kinds, ``auto``'s choice, and ``make_loader``.

``choices.LOADERS`` holds a row per --loader value; ``KIND_CLASSES`` the class behind each kind
(``resident.py``, ``streaming.py``, ``dali.py``), checked at import to cover exactly the kinds.

``auto`` (``choose_loader_kind``) picks among the kinds that
- give the reference batches for the run's --augment (``Loader.gives_reference_batches``: DALI's
  AutoAugment is not PIL's bit for bit, so with AutoAugment it is left out; ask for
  ``--loader dali`` to use it anyway),
- are installed (DALI is an optional package), and
- can hold the set: the gpu kind only when it fits ``DEVICE_RESIDENT_MAX_BYTES`` (decoded uint8)
  and needs no decoding (an image folder would be decoded whole, up front).
On a CUDA device the candidates are measured (a few sequential batches of each on the real
source, after a warm-up), the fastest wins and is kept in a JSON cache (``loader_choice.json``
in ``measure.cache_dir()``) keyed by what decides it. Elsewhere the first candidate wins
unmeasured: on a CPU a resident batch is the same work in the training process that the
streaming kinds do in workers plus a copy. ``LoaderChoice.describe`` is the run log's line,
naming each kind left out and why.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ratio_fast.choices import LOADER_KINDS, LOADERS, check_builders
from ratio_fast.data.batches import BatchSpec, Loader, installed
from ratio_fast.data.dali import DaliLoader
from ratio_fast.data.resident import DEVICE_RESIDENT_MAX_BYTES, ResidentLoader
from ratio_fast.data.sources import ImageSource, as_source
from ratio_fast.data.streaming import TorchLoader
from ratio_fast.errors import UserError
from ratio_fast.measure import Measured, Timer, cache_dir, device_timer, fastest, setting_key

KIND_CLASSES: dict[str, type[Loader]] = {"gpu": ResidentLoader, "dali": DaliLoader, "torch": TorchLoader}
check_builders(KIND_CLASSES, LOADER_KINDS, __name__)

LOADER_CHOICE_CACHE = "loader_choice.json"  # file name, in the attack schedule cache's folder
# Batches per timed call, as many as the torch loader prefetches by default: the calls follow
# one another, so a timed call mostly waits for batches prepared while it runs (the steady rate).
MEASURED_BATCHES = 8


def make_loader(choice: str, images: np.ndarray | torch.Tensor | ImageSource, labels: np.ndarray | torch.Tensor | None,
                spec: BatchSpec, device: torch.device | str, *, workers: int | None = None) -> Loader:
    """A loader for --loader ``choice`` (``auto`` or a kind) and ``spec``; ``workers`` (streaming
    kinds only) defaults to ``streaming.DEFAULT_WORKERS``."""
    kind = choose_loader_kind(choice, images, device, spec, workers=workers).kind
    options = {"workers": workers} if LOADERS[kind].streams and workers is not None else {}
    return KIND_CLASSES[kind](images, labels, spec, device, **options)


@dataclass
class LoaderChoice:
    """The loader kind to use, and what ``auto`` found: its measurement (now or in an earlier run),
    the kinds it left out and why."""

    kind: str
    measurement: Measured | None = None  # None: chosen without measuring (by name, or by rule)
    batch: int = 0  # images per measured batch, on one rank
    cache_path: Path | None = None
    candidates: tuple[str, ...] = ()  # the kinds auto chose among; empty: --loader named the kind
    left_out: dict[str, str] = field(default_factory=dict)  # kind -> why auto did not consider it
    note: str = ""  # about a kind asked for by name, e.g. batches that differ from the reference

    @property
    def measured(self) -> bool:
        return self.measurement is not None

    @property
    def cached(self) -> bool:
        """The measurement was read from the cache rather than made now."""
        return self.measured and self.measurement.cached

    @property
    def images_per_s(self) -> dict[str, float]:
        """Per measured kind, on one rank."""
        timings = self.measurement.timings_ms if self.measured else {}
        return {kind: self.batch / (ms / 1e3) for kind, ms in timings.items()}

    def describe(self) -> str:
        """One line for the run log, or "" when there is nothing to say beyond the kind, e.g.
        ``loader auto: torch 23k img/s, gpu 18k img/s; left out: dali (...) -> torch (...)``."""
        if not self.candidates:
            return f"loader {self.kind}: {self.note}" if self.note else ""
        left_out = "".join(f"; left out: {kind} ({why})" for kind, why in self.left_out.items())
        if not self.measured:
            rule = ("the only candidate" if len(self.candidates) == 1 else
                    f"the first of {', '.join(self.candidates)} (measured on CUDA only)")
            return f"loader auto: {self.kind}, {rule}{left_out}"
        rates = sorted(self.images_per_s.items(), key=lambda item: -item[1])
        measured = ", ".join(f"{kind} {rate / 1e3:.3g}k img/s" for kind, rate in rates)
        origin = f"read from {self.cache_path}" if self.cached else f"measured now, cached in {self.cache_path}"
        return f"loader auto: {measured}{left_out} -> {self.kind} ({origin})"


def choose_loader_kind(choice: str, images: np.ndarray | torch.Tensor | ImageSource, device: torch.device | str,
                       spec: BatchSpec, *, workers: int | None = None, timer: Timer | None = None,
                       cache: str | Path | None = None) -> LoaderChoice:
    """The loader kind --loader ``choice`` stands for with these images, ``spec`` and ``device``.

    ``auto`` measures (on CUDA, or on any device when ``timer`` is given: tests inject one) the
    candidates the module names, as ``make_loader`` builds them for ``spec``, unlabelled (labels
    cost 8 bytes an image), and keeps the answer in ``cache`` (default:
    ``default_loader_cache_path()``). A kind named outright is taken as it is.
    """
    if choice not in LOADERS:
        raise UserError(f"--loader: unknown loader {choice!r}; choose one of {', '.join(LOADERS)}")
    if not LOADERS[choice].picks:
        exact = LOADERS[choice].gives_reference_batches(spec.augmentation)
        return LoaderChoice(choice, note="" if exact else f"as asked, though with --augment {spec.augment} its "
                            "batches are not the reference's bit for bit (README, Known limits)")
    source = images if torch.is_tensor(images) else as_source(images)
    candidates, left_out = auto_candidates(source, spec)
    device = torch.device(device)
    if len(candidates) == 1 or (timer is None and device.type != "cuda"):
        return LoaderChoice(candidates[0], candidates=candidates, left_out=left_out)

    measured_spec = dataclasses.replace(spec, seed=0, drop_last=len(source) >= spec.batch_size)
    time_kind = timer or device_timer(device)  # timed: a call that loads MEASURED_BATCHES batches

    def seconds_per_batch(candidate: str) -> float:
        loader = make_loader(candidate, images, None, measured_spec, device, workers=workers)
        try:
            return time_kind(candidate, _next_batches(loader, MEASURED_BATCHES)) / MEASURED_BATCHES
        finally:
            loader.close()  # streaming loaders own worker processes

    path = Path(cache) if cache is not None else default_loader_cache_path()
    found = fastest(_choice_key(source, device, spec, candidates, workers), seconds_per_batch, candidates, path,
                    what="loader auto")
    return LoaderChoice(found.best, found, spec.local_batch_size, path, candidates, left_out)


def auto_candidates(source: torch.Tensor | ImageSource, spec: BatchSpec) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the kinds ``auto`` may pick for ``source`` and ``spec``, in the order of the unmeasured rule
    (first: fastest), {each kind left out: why})."""
    size = source.numel() if torch.is_tensor(source) else source.nbytes
    decodes = getattr(source, "decodes", False)
    candidates, left_out = [], {}
    for kind in LOADER_KINDS:
        row = LOADERS[kind]
        if not row.gives_reference_batches(spec.augmentation):
            left_out[kind] = f"its AutoAugment is not PIL's bit for bit; --loader {kind} to use it anyway"
        elif not installed(row):
            left_out[kind] = f"not installed: pip install {row.install}"
        elif not row.streams and decodes:
            left_out[kind] = "the set is image files, which it would decode whole, up front"
        elif not row.streams and size > DEVICE_RESIDENT_MAX_BYTES:
            left_out[kind] = (f"the set is {size / 2**30:.1f} GiB as uint8, above the "
                              f"{DEVICE_RESIDENT_MAX_BYTES / 2**30:.0f} GiB it holds on the device")
        else:
            candidates.append(kind)
    return tuple(candidates), left_out


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
