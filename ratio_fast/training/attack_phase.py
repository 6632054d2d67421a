"""The attack phase of a training step: the clean forward and the in- and out-distribution
attacks of one batch, under the --attack-schedule (attacks/schedule.py) that `auto` measures on
the first batch, replayed from a CUDA graph when asked."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch

from ..attacks.cuda_graph import GraphedCall
from ..attacks.objectives import at_least_fp32
from ..attacks.schedule import choose_schedule, run_attacks
from ..choices import SCHEDULES, SEQUENTIAL, Mode
from ..measure import Measured, Timer, device_timer, setting_key
from ..models import eval_mode
from .speed import SpeedSettings


class AttackPhase:
    """The attack phase of a training step: (clean logits or None, x_adv or None, z_adv or None)
    of one batch, in eval mode, for the attacks of a --mode row (choices.MODES).

        phase = AttackPhase(model, forward_model, attack_in, attack_out, speed, device, mode=MODES["ratio"])
        clean_logits, x_adv, z_adv = phase(x, y, z)

    attack_in or attack_out is None where the row has no such attack; a phase with one attack
    runs it alone. The clean forward of x (the accuracy the attack starts from, and TRADES'
    target p(x); of z too where the out-distribution attack is TRADES') and the attacks run under
    autocast without its weight cache, under `speed.attack_schedule`: "auto" is measured on the first
    batch with `timer` (default: CUDA events), cached in `cache_path` (default:
    attacks/schedule.default_cache_path()) and announced through `log`; on a CPU without a timer it is
    sequential, since one stream has nothing to choose between. With `speed.cuda_graphs` each
    schedule's phase is replayed from a CUDA graph: its outputs are the graph's static tensors,
    overwritten by the next call.
    """

    def __init__(self, model: torch.nn.Module, forward_model: torch.nn.Module, attack_in, attack_out,
                 speed: SpeedSettings, device: torch.device, *, mode: Mode, timer: Timer | None = None,
                 cache_path: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.model, self.forward_model = model, forward_model  # `model`'s mode; `forward_model` is called
        self.attack_in, self.attack_out = attack_in, attack_out
        self.mode = mode
        self.speed, self.device = speed, device
        # 'auto' until the first batch has chosen; one attack has nothing to share the device with.
        both = attack_in is not None and attack_out is not None
        self.schedule = speed.attack_schedule if both else SEQUENTIAL
        self.choice: Measured | None = None  # set when 'auto' has measured or read the cache
        self._timer, self._cache_path, self._log = timer, cache_path, log
        self._calls: dict[str, Callable] = {}  # schedule -> the phase under it (graphed or not)
        self._side_stream: torch.cuda.Stream | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None):
        return self._call(self._resolve_schedule(x, y, z))(x, y, z)

    def _run(self, schedule: str, x, y, z):
        mode = self.mode
        # No autocast weight cache: under a CUDA graph a cached cast would be replayed stale.
        with self.speed.autocast(self.device, cache_enabled=False):
            with torch.no_grad(), eval_mode(self.model):  # clean predictions, as the attacks see the model
                clean_logits = self.forward_model(x) if self.attack_in is not None else None
                labels_in = _probabilities(clean_logits) if mode.in_trades else y
                labels_out = _probabilities(self.forward_model(z)) if mode.out_trades else None
            if self.attack_out is None:
                return clean_logits, self.attack_in(self.forward_model, x, labels_in), None
            if self.attack_in is None:
                return clean_logits, None, self.attack_out(self.forward_model, z, labels_out)
            x_adv, z_adv = run_attacks(schedule, self.forward_model, x, labels_in, z, self.attack_in, self.attack_out,
                                       self._stream_for(schedule), labels_z=labels_out)
            return clean_logits, x_adv, z_adv

    def _stream_for(self, schedule: str) -> torch.cuda.Stream | None:
        if not SCHEDULES[schedule].concurrent or self.device.type != "cuda":
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
        if not SCHEDULES[self.schedule].picks:
            return self.schedule
        if self._timer is None and self.device.type != "cuda":
            self.schedule = SEQUENTIAL
            return self.schedule
        timer = self._timer or device_timer(self.device)

        def seconds(name: str) -> float:  # one attack phase of this batch under schedule `name`
            return timer(name, lambda: self._call(name)(x, y, z))

        self.choice = choose_schedule(self._cache_key(x, z), seconds, self.speed.schedule_candidates,
                                      cache_path=self._cache_path)
        self.schedule = self.choice.best
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


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """TRADES' target: the clean prediction, in at least fp32."""
    return at_least_fp32(logits).softmax(dim=1)
