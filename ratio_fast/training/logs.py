"""What a run records besides its checkpoints, all written by rank 0 into the run directory:
`train.log` (the run's console lines, timestamped, appended on resume), per-step scalars every
--log-every steps (rows of "kind" "step" in metrics.jsonl, beside the per-epoch rows of "kind"
"epoch") and TensorBoard event files (--tensorboard, in `tensorboard/`).

The per-step scalars are summed on the device step by step and read once per log interval, so
logging adds no host synchronization to a step.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import UserError
from ..files import file_error
from .distributed import DistContext, all_reduce_mean

TRAIN_LOG = "train.log"
TENSORBOARD = "tensorboard"
NO_TENSORBOARD = '--tensorboard needs the tensorboard package: pip install tensorboard (or "ratio-fast[tensorboard]")'


class ConsoleLog:
    """The run's lines: printed to `stream` (None: not printed, as on ranks other than 0) and, from
    `start(run_dir)` on, appended to run_dir/train.log. Lines printed before `start` are written
    then, so a run that writes nothing (refused, or nothing to do) leaves no log behind."""

    def __init__(self, stream=None):
        self.stream, self.file, self.pending = stream, None, []

    def print(self, line: str) -> None:
        if self.stream is None:
            return
        print(line, file=self.stream, flush=True)
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n"
        if self.file is None:
            self.pending.append(stamped)
        else:
            self._write(stamped)

    def start(self, run_dir: Path) -> None:
        if self.stream is None or self.file is not None:
            return
        path = Path(run_dir) / TRAIN_LOG
        try:
            self.file = open(path, "a")
        except OSError as error:
            raise file_error(path, error) from None
        for stamped in self.pending:
            self._write(stamped)
        self.pending = []

    def _write(self, text: str) -> None:
        try:
            self.file.write(text)
            self.file.flush()
        except OSError as error:
            raise file_error(self.file.name, error, advice="the checkpoint is kept; fix that, then continue "
                                                           "with --resume") from None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def accumulate(sums: dict, metrics: dict) -> None:
    """Add one step's metrics to `sums`, on the device (no sync).

    A skipped step (non-finite loss or gradient) counts in "kept" as 0 and adds nothing, so the
    means are over the steps that trained.
    """
    kept = 1.0 - metrics["skipped"].float()
    sums["kept"] = sums.get("kept", 0.0) + kept
    for key, value in metrics.items():
        if key not in ("skipped", "lr"):
            sums[key] = sums.get(key, 0.0) + torch.where(kept > 0, value, torch.zeros_like(value))


def means(sums: dict, steps: int) -> dict:
    """The per-step means of `accumulate`'s sums over `steps` steps (read from the device: a sync),
    and how many of them were skipped."""
    kept = float(sums["kept"])
    row = {key: float(value) / max(kept, 1.0) for key, value in sums.items() if key != "kept"}
    row["skipped_steps"] = round(steps - kept)
    return row


class StepScalars:
    """--log-every: the mean of each step metric over the last `every` steps, with the learning rate
    and images/s, as a metrics.jsonl row of kind "step"."""

    def __init__(self, every: int | None, batch_size: int, ctx: DistContext):
        self.every, self.batch_size, self.ctx = every, batch_size, ctx
        self.sums: dict = {}
        self.steps = 0
        self.began = time.perf_counter()

    def add(self, metrics: dict) -> None:
        if self.every:
            accumulate(self.sums, metrics)
            self.steps += 1

    def row(self, epoch: int, step: int, lr: float) -> dict | None:
        """The row at `step` if it is a log step (every rank calls this: the sums are all-reduced)."""
        if not self.every or step % self.every or not self.steps:
            return None
        row = {"kind": "step", "epoch": epoch, "step": step,
               **means(all_reduce_mean(self.sums, self.ctx), self.steps), "lr": lr}
        seconds = time.perf_counter() - self.began  # after the read above: the device caught up
        row["images_per_s"] = round(self.steps * self.batch_size / seconds, 1)
        self.sums, self.steps, self.began = {}, 0, time.perf_counter()
        return row

    def restart_clock(self) -> None:
        """Leave the time of an evaluation or checkpoint out of the next row's images/s."""
        self.began = time.perf_counter()


class TensorBoard:
    """--tensorboard: each metrics row's numbers as scalars "<kind>/<name>" at its step."""

    def __init__(self, run_dir: Path, steps_done: int):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        # Resuming: events logged after the checkpoint (by a run that crashed later) are dropped.
        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD), purge_step=steps_done + 1 if steps_done else None)

    def add(self, row: dict) -> None:
        for name, value in row.items():
            if name not in ("kind", "step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{row.get('kind', 'epoch')}/{name}", value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def check_tensorboard() -> None:
    """Fail before training, in one line, when --tensorboard cannot work."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(NO_TENSORBOARD)
