"""How a training step's two attacks share the device (--attack-schedule, choices.SCHEDULES),
and the measured choice between the ways.

    sequential  in-distribution attack, then out-distribution attack (the authors' order)
    streams     the two attacks concurrently on two CUDA streams (sequential on a CPU)
    concat      one batch cat([x, z]) with per-sample eps, step and objective (joint_pgd),
                for attacks whose row shares_batch

All three compute the same adversarial examples (concat up to the rounding of a larger batch).
Which is fastest depends on the GPU, the model and the batch, so "auto" measures the
candidates once, on the real batch, and keeps the answer in a JSON cache keyed by everything
that decides it (GPU, model, batch, precision, steps, graphs, compile, torch version). A later
run with the same key (a resumed run, for one) reads the cache, so it makes the same choice
without measuring. training/attack_phase.py runs the phase of each step under the choice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..choices import SCHEDULE_KINDS, SCHEDULES
from ..measure import Measured, cache_dir, fastest
from .pgd import PGD, joint_pgd


def run_attacks(schedule: str, model, x, y, z, attack_in: PGD, attack_out: PGD,
                side_stream: torch.cuda.Stream | None = None,
                labels_z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, z_adv) under `schedule`; streams needs `side_stream` on CUDA and is sequential without one.
    labels_z: z's labels where the out-distribution objective reads them (TRADES' p(z))."""
    if schedule not in SCHEDULE_KINDS:
        raise ValueError(f"schedule must be one of {SCHEDULE_KINDS}, got {schedule!r}")
    if SCHEDULES[schedule].one_batch:
        return joint_pgd(model, x, y, z, attack_in, attack_out, labels_z=labels_z)
    if SCHEDULES[schedule].concurrent and side_stream is not None:
        # Fork: the side stream starts once the main stream has produced z; join: the main
        # stream continues once the side stream is done. Every tensor the side stream touches is
        # used by the main stream only after the join, and the next fork happens after the main
        # stream's last use, so the caching allocator needs no record_stream (which also keeps
        # the schedule capturable in a CUDA graph).
        main = torch.cuda.current_stream(x.device)
        side_stream.wait_stream(main)
        with torch.cuda.stream(side_stream):
            z_adv = attack_out(model, z, labels_z)
        x_adv = attack_in(model, x, y)
        main.wait_stream(side_stream)
        return x_adv, z_adv
    return attack_in(model, x, y), attack_out(model, z, labels_z)


def default_cache_path() -> Path:
    """attack_schedule.json in the measurement cache folder (see measure.cache_dir)."""
    return cache_dir() / "attack_schedule.json"


def choose_schedule(key: str, measure: Callable[[str], float], candidates: tuple[str, ...],
                    cache_path: str | Path | None = None) -> Measured:
    """The fastest of `candidates` (choices.schedule_candidates of the attack) for `key`, measured
    once with measure(name) -> seconds, then cached."""
    return fastest(key, measure, candidates, cache_path if cache_path is not None else default_cache_path(),
                   what="attack schedule")
