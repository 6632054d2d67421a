"""Preemption: SIGTERM or SIGINT asks the run to stop at the next step boundary.

The handler only sets a flag; the training loop reads it between steps, writes a checkpoint
and returns. A second SIGINT is not caught, so a user who presses Ctrl-C twice gets the usual
immediate KeyboardInterrupt. A repeated SIGTERM is the same request again: schedulers signal
every process of a job, and torchrun's agent passes on the SIGTERM it gets, so a worker may get
two; the run stops at the next step boundary all the same (SIGKILL stops it at once).

Under torchrun the ranks must stop after the same step, or one would wait forever in a
collective the others never join. They agree through a MAX all-reduce of the flag over a gloo
group on CPU tensors, started at one step boundary and read at the next: the decision costs
no GPU synchronization and at most one extra step.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from .distributed import DistContext

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Install with `with StopRequest(ctx) as stop:`; call `stop.at_step_boundary()` after every step."""

    def __init__(self, ctx: DistContext | None = None):
        self.ctx = ctx or DistContext()
        self.signal_name: str | None = None  # set by the handler on this rank
        self.stopped = False  # at_step_boundary() said stop (agreed by all ranks)
        self._previous: dict[int, object] = {}
        self._group = None
        self._flag = torch.zeros(1)
        self._pending = None

    def __enter__(self) -> "StopRequest":
        # Python delivers signals to the main thread only; a run started from another thread
        # (embedded in someone's program) keeps that program's handlers.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        if self.ctx.is_distributed:
            is_gloo = dist.get_backend() == "gloo"
            self._group = None if is_gloo else dist.new_group(backend="gloo")
        return self

    def __exit__(self, *exc) -> None:
        if self._pending is not None:  # every rank started it; finish it so the group can shut down
            self._pending.wait()
            self._pending = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signum, self._previous[signum])  # a second Ctrl-C acts at once

    def at_step_boundary(self) -> bool:
        """True when the run should stop now (on every rank at the same step)."""
        if not self.ctx.is_distributed:
            self.stopped = self.signal_name is not None
            return self.stopped
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            if self._flag.item():  # a CPU tensor: no GPU synchronization
                self.stopped = True
                self.signal_name = self.signal_name or "a signal to another rank"
                return True
        self._flag = torch.tensor([1.0 if self.signal_name else 0.0])
        self._pending = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return False
