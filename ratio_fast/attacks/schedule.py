"""How RATIO's two attacks share the device, and the measured choice between the ways.

    sequential  in-distribution attack, then out-distribution attack (the authors' order)
    streams     the two attacks concurrently on two CUDA streams (sequential on a CPU)
    concat      one batch cat([x, z]) with per-sample eps, step and objective (joint_l2_pgd)

All three compute the same adversarial examples (concat up to the rounding of a larger batch).
Which is fastest depends on the GPU, the model and the batch, so "auto" measures the
candidates once, on the real batch, and keeps the answer in a JSON cache keyed by everything
that decides it (GPU, model, batch, precision, steps, graphs, compile, torch version). A later
run with the same key (a resumed run, for one) reads the cache, so it makes the same choice
without measuring.

`AttackPhase` is what the trainer calls: the clean forward and the attacks of one batch under
the chosen schedule, replayed from a CUDA graph when asked.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .pgd import L2PGD, joint_l2_pgd
from .cuda_graph import GraphedCall
from ..measure import Timer, cache_dir, device_timer, fastest, setting_key
from ..models import eval_mode
from ..training.speed import SpeedSettings

SCHEDULES = ("sequential", "streams", "concat")
AUTO_CANDIDATES = ("streams", "concat")


def run_attacks(schedule: str, model, x, y, z, attack_in: L2PGD, attack_out: L2PGD,
                side_stream: torch.cuda.Stream | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, z_adv) under `schedule`; streams needs `side_stream` on CUDA and is sequential without one."""
    if schedule == "concat":
        return joint_l2_pgd(model, x, y, z, attack_in, attack_out)
    if schedule == "streams" and side_stream is not None:
        # Fork: the side stream starts once the main stream has produced z; join: the main
        # stream continues once the side stream is done. Every tensor the side stream touches is
        # used by the main stream only after the join, and the next fork happens after the main
        # stream's last use, so the caching allocator needs no record_stream (which also keeps
        # the schedule capturable in a CUDA graph).
        main = torch.cuda.current_stream(x.device)
        side_stream.wait_stream(main)
        with torch.cuda.stream(side_stream):
            z_adv = attack_out(model, z)
        x_adv = attack_in(model, x, y)
        main.wait_stream(side_stream)
        return x_adv, z_adv
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return attack_in(model, x, y), attack_out(model, z)


def default_cache_path() -> Path:
    """attack_schedule.json in the measurement cache folder (see measure.cache_dir)."""
    return cache_dir() / "attack_schedule.json"


@dataclass
class ScheduleChoice:
    schedule: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # per candidate, per attack phase
    key: str = ""
    cached: bool = False  # read from the cache rather than measured now

    def describe(self) -> str:
        times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in self.timings_ms.items())
        origin = "cached" if self.cached else "measured"
        return f"attack schedule: {self.schedule} ({origin}: {times})"


def choose_schedule(key: str, measure: Callable[[str], float], candidates=AUTO_CANDIDATES,
                    cache_path: str | Path | None = None) -> ScheduleChoice:
    """The fastest candidate for `key`, measured once with measure(name) -> seconds, then cached."""
    found = fastest(key, measure, candidates, cache_path if cache_path is not None else default_cache_path())
    return ScheduleChoice(found.best, found.timings_ms, key, found.cached)


class AttackPhase:
    """The attack phase of a RATIO step: (clean logits, x_adv, z_adv) of one batch, in eval mode.

        phase = AttackPhase(model, forward_model, attack_in, attack_out, speed, device)
        clean_logits, x_adv, z_adv = phase(x, y, z)   # z None: in-distribution attack only

    The clean forward (the accuracy the attack starts from) and the attacks run under autocast
    without its weight cache, under `speed.attack_schedule`: "auto" is measured on the first
    batch with `timer` (default: CUDA events), cached in `cache_path` (default:
    default_cache_path()) and announced through `log`; on a CPU without a timer it is
    sequential, since one stream has nothing to choose between. With `speed.cuda_graphs` each
    schedule's phase is replayed from a CUDA graph: its outputs are the graph's static tensors,
    overwritten by the next call.
    """

    def __init__(self, model: torch.nn.Module, forward_model: torch.nn.Module, attack_in, attack_out,
                 speed: SpeedSettings, device: torch.device, *, timer: Timer | None = None,
                 cache_path: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.model, self.forward_model = model, forward_model  # `model`'s mode; `forward_model` is called
        self.attack_in, self.attack_out = attack_in, attack_out
        self.speed, self.device = speed, device
        self.schedule = speed.attack_schedule  # 'auto' until the first batch has chosen
        self.choice: ScheduleChoice | None = None  # set when 'auto' has measured or read the cache
        self._timer, self._cache_path, self._log = timer, cache_path, log
        self._calls: dict[str, Callable] = {}  # schedule -> the phase under it (graphed or not)
        self._side_stream: torch.cuda.Stream | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None):
        return self._call(self._resolve_schedule(x, y, z))(x, y, z)

    def _run(self, schedule: str, x, y, z):
        # No autocast weight cache: under a CUDA graph a cached cast would be replayed stale.
        with self.speed.autocast(self.device, cache_enabled=False):
            with torch.no_grad(), eval_mode(self.model):  # clean accuracy, as the attack sees the model
                clean_logits = self.forward_model(x)
            if z is None:
                return clean_logits, self.attack_in(self.forward_model, x, y), None
            x_adv, z_adv = run_attacks(schedule, self.forward_model, x, y, z, self.attack_in, self.attack_out,
                                       self._stream_for(schedule))
            return clean_logits, x_adv, z_adv

    def _stream_for(self, schedule: str) -> torch.cuda.Stream | None:
        if schedule != "streams" or self.device.type != "cuda":
            return None
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device=self.device)
        return self._side_stream

    def _call(self, schedule: str) -> Callable:
        if schedule not in self._calls:
            run = functools.partial(self._run, schedule)
            self._calls[schedule] = GraphedCall(run) if self.speed.cuda_graphs else run
        return self._calls[schedule]

    def _resolve_schedule(self, x, y, z) -> str:
        if self.schedule != "auto":
            return self.schedule
        if self._timer is None and self.device.type != "cuda":
            self.schedule = "sequential"
            return self.schedule
        timer = self._timer or device_timer(self.device)

        def seconds(name: str) -> float:  # one attack phase of this batch under schedule `name`
            return timer(name, lambda: self._call(name)(x, y, z))

        self.choice = choose_schedule(self._cache_key(x, z), seconds, cache_path=self._cache_path)
        self.schedule = self.choice.schedule
        # Only the chosen schedule runs from now on: the other's CUDA graph would only hold memory.
        self._calls = {name: call for name, call in self._calls.items() if name == self.schedule}
        if self._log is not None:
            self._log(self.choice.describe())
        return self.schedule

    def _cache_key(self, x, z) -> str:
        """Everything that decides which schedule is fastest, so a cached answer is only reused for it."""
        s = self.speed
        n_params = sum(p.numel() for p in self.model.parameters())
        return setting_key(self.device, f"{type(self.model).__name__} {n_params} params",
                           f"batch {x.shape[0]}+{z.shape[0]}", f"image {tuple(x.shape[1:])}", s.precision,
                           f"steps {self.attack_in.steps}/{self.attack_out.steps}", f"graphs {s.cuda_graphs}",
                           f"compile {s.compile}", f"channels_last {s.channels_last}")
