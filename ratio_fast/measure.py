"""Measure once, keep the answer: the fastest of a few equivalent ways, cached per setting.

The attack schedule (streams or one concatenated batch) and the data loader (resident, DALI,
DataLoader) both compute the same thing whichever way is used; which way is fastest depends on
the GPU and the setting. `fastest` times each candidate once and keeps the winner in a small
JSON file under $RATIO_FAST_CACHE_DIR (default ~/.cache/ratio-fast), keyed by everything that
decides it, so later runs (resumed ones too) make the same choice without measuring.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError
from .files import atomic_write_text

# timer(name, run) -> seconds per call of run(), which does the work the candidate `name` stands for.
Timer = Callable[[str, Callable[[], object]], float]


def time_call(run: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 3) -> float:
    """Median seconds of run() after `warmup` calls: CUDA events on a GPU, the wall clock elsewhere."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def device_timer(device: torch.device) -> Timer:
    """The timer `fastest`'s callers use unless a test injects one: time_call on `device`."""
    return lambda name, run: time_call(run, device)


def setting_key(device: torch.device, *setting: str) -> str:
    """A cache key: the device (its name and compute capability on CUDA), the setting, the torch version."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where = f"{torch.cuda.get_device_name(device)} sm{major}{minor}"
    else:
        where = device.type
    return " | ".join([where, *setting, f"torch {torch.__version__}"])


def cache_dir() -> Path:
    """$RATIO_FAST_CACHE_DIR, by default ~/.cache/ratio-fast."""
    return Path(os.environ.get("RATIO_FAST_CACHE_DIR") or Path.home() / ".cache" / "ratio-fast")


@dataclass
class Measured:
    """What `fastest` found: the fastest candidate, each candidate's time, whether it was read from
    the cache, and what was chosen (for `describe`)."""

    best: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # per candidate
    cached: bool = False  # read from the cache rather than measured now
    what: str = ""  # e.g. "attack schedule"

    def describe(self) -> str:
        """One log line: 'attack schedule: concat (measured: streams 500.0 ms, concat 100.0 ms)'."""
        times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in self.timings_ms.items())
        return f"{self.what}: {self.best} ({'cached' if self.cached else 'measured'}: {times})"


def fastest(key: str, measure: Callable[[str], float], candidates, cache_path: str | Path, what: str = "") -> Measured:
    """The fastest candidate for `key`: from the cache, or measure(name) -> seconds for each, then cached.

    An unreadable cache is measured over and rewritten; it holds measurements, not settings.
    """
    path = Path(cache_path)
    entries = _read_cache(path)
    entry = entries.get(key)
    if entry and entry.get("fastest") in candidates:
        return Measured(entry["fastest"], dict(entry.get("timings_ms", {})), cached=True, what=what)
    timings_ms = {name: 1e3 * measure(name) for name in candidates}
    best = min(timings_ms, key=timings_ms.get)
    entries[key] = {"fastest": best, "timings_ms": timings_ms, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_cache(path, entries)
    return Measured(best, timings_ms, cached=False, what=what)


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict) -> None:
    """Atomic write, so two runs starting together never leave a torn file."""
    try:
        atomic_write_text(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    except UserError:
        pass  # a read-only home only costs a new measurement next time
