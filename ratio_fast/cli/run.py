"""A whole training run: data, model, trainer, epochs, evaluation, logs and checkpoints.

The run directory holds `config.json` (the resolved settings), `metrics.jsonl` (one line per
epoch, and with --log-every one per interval of steps), `train.log` (the console lines; these and
TensorBoard's files: training/logs.py), `curves.png` (plots.py) and `checkpoint.pt` (model, EMA,
optimizer, scaler, RNG and position, rewritten atomically after every epoch, every
--checkpoint-every steps, and when the run stops early; copies of it every --checkpoint-epochs,
the --keep-last newest kept).
Batch b of epoch e is a pure function of (seed, e, b), so a resumed run continues exactly
where the checkpoint was taken.

A run directory belongs to one run. A resumed run writes into its checkpoint's directory; a
--out elsewhere must be new or empty, and then holds a copy of the run (its history up to the
checkpoint, best.pt) that continues there, the original left as it was.

Under torchrun every rank runs this same code on its slice of each global batch (DDP for the
train-mode step); rank 0 alone writes logs, metrics and checkpoints. SIGTERM or SIGINT stops
the run at the next step boundary with a checkpoint (see training/stop.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..attacks.named import build_attack
from ..training.checkpoint import BEST, CHECKPOINT, load_checkpoint, save_checkpoint
from ..choices import LOADERS, MODES, NORMS
from ..config import TrainConfig, resume_differences
from ..data import BatchSpec, choose_loader_kind, load_in_distribution, load_out_distribution, make_loader
from ..datasets import get_dataset
from ..training.distributed import (DistContext, all_reduce_mean, context_from_env, convert_sync_batchnorm,
                          init_process_group, resolve_device, shutdown)
from ..errors import TrainingStopped, UserError
from ..files import LOCK_FILE, RunDirectoryLock, atomic_copy, atomic_write_text, file_error
from ..evaluation.evaluate import clean_accuracy, robust_accuracy
from ..models import create_model
from .. import plots
from ..ops import require_backend
from ..progress import Progress
from ..training.logs import ConsoleLog, StepScalars, TensorBoard, accumulate, check_tensorboard, means
from ..training.stop import StopRequest
from ..training.speed import wants_channels_last
from ..training.trainer import RatioTrainer

CONFIG = "config.json"
METRICS = "metrics.jsonl"
HISTORY = "checkpoint-epoch-{epoch}.pt"  # the copies of --checkpoint-epochs


class Run:
    """Everything a training run needs, built from a TrainConfig; `fit()` runs it."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, resume: bool | str | Path = False, log=None,
                 dist_context: DistContext | None = None):
        """resume: False (a new run), True (the checkpoint in run_dir) or a checkpoint's path (of
        another directory: a copy of that run continues in run_dir, which must be new or empty). A
        resumed run must have the checkpoint's settings, except those config.resume_differences allows."""
        self.config = cfg = config.validate()
        self.run_dir = Path(run_dir)
        self.ctx = ctx = dist_context or context_from_env()
        self.log = ConsoleLog((log if log is not None else sys.stdout) if ctx.is_main else None)
        self.tensorboard: TensorBoard | None = None
        self.stopped_by: str | None = None  # the signal that stopped fit() early, if one did
        self.copied_from: Path | None = None  # the run directory this run continues a copy of
        self.device = resolve_device(cfg.device, ctx)
        if ctx.is_distributed and cfg.batch_size % (ctx.world_size * cfg.bn_groups):
            groups = f" x --bn-groups {cfg.bn_groups}" if cfg.bn_groups > 1 else ""
            raise UserError(f"--batch-size {cfg.batch_size} must be divisible by the {ctx.world_size} processes"
                            f"{groups} (it is the global batch; each rank takes an equal slice)")
        require_backend(cfg.backend, self.device)  # a backend that cannot run fails now, in one line
        if cfg.tensorboard and ctx.is_main:
            check_tensorboard()
        # One writer per run directory (rank 0 writes everything), held until fit() ends.
        self._lock = RunDirectoryLock(self.run_dir).acquire() if ctx.is_main else None
        try:
            self._build(resume)
        except BaseException:
            if self._lock is not None:
                self._lock.release(clean=True)  # a run that failed to start leaves no empty directory
            raise

    def _build(self, resume: bool | str | Path) -> None:
        cfg, ctx = self.config, self.ctx
        checkpoint_state = self._checkpoint_to_resume(resume)
        init_process_group(ctx, self.device)

        # Offset by rank so random attack starts differ between ranks; the data order does not
        # use this generator (it is drawn from (seed, epoch) and sliced per rank).
        torch.manual_seed(cfg.seed + ctx.rank)
        train = load_in_distribution(cfg.dataset, cfg.data_dir, train=True,
                                     synthetic_size=cfg.synthetic_size, seed=cfg.seed)
        test = load_in_distribution(cfg.dataset, cfg.data_dir, train=False, seed=cfg.seed)
        if len(train.labels) < cfg.batch_size:
            raise UserError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(train.labels)} images)")
        channels_last = wants_channels_last(cfg, self.device)
        data_set = get_dataset(cfg.dataset)
        # Both batches get the same augmentation, filled with the in-distribution's mean colour (as the authors do).
        spec = BatchSpec(cfg.batch_size, seed=cfg.seed, augment=cfg.augment, mean=data_set.mean,
                         channels_last=channels_last, rank=ctx.rank, world_size=ctx.world_size)
        said: set[str] = set()  # the loader lines logged so far
        self.loader_kinds = [self._loader_kind(train.images, spec, said)]
        self.train_loader = make_loader(self.loader_kinds[0], train.images, train.labels, spec, self.device,
                                        workers=cfg.workers)
        # Evaluation restarts at batch 0 every epoch: the resident loader does that for free.
        self.test_loader = make_loader("gpu", test.images, test.labels, BatchSpec.in_order(256, channels_last),
                                       self.device)
        self.out_loader = None
        if MODES[cfg.mode].uses_out_data:
            out_images = load_out_distribution(cfg.out_distribution, cfg.data_dir, in_name=cfg.dataset, seed=cfg.seed,
                                               exclude=cfg.out_exclude, skip_bad_images=cfg.skip_bad_images)
            if len(out_images) < cfg.batch_size:
                raise UserError(f"--out-data has {len(out_images)} images, fewer than --batch-size {cfg.batch_size}")
            # A seed of its own, so the out-distribution stream does not mirror the in-distribution one.
            out_spec = dataclasses.replace(spec, seed=cfg.seed + 1)
            self.loader_kinds.append(self._loader_kind(out_images, out_spec, said))
            self.out_loader = make_loader(self.loader_kinds[1], out_images, None, out_spec, self.device,
                                          workers=cfg.workers)

        self.steps_per_epoch = len(self.train_loader)
        model = create_model(cfg.arch, num_classes=train.num_classes, mean=data_set.mean, std=data_set.std)
        if cfg.sync_bn and ctx.is_distributed:
            model = convert_sync_batchnorm(model, self.device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=memory_format)
        train_module = None
        if ctx.is_distributed:  # gradients all-reduced in the train step; attacks use the bare model
            train_module = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes are static (drop_last), so tuning pays once
        self.trainer = RatioTrainer(model, cfg, cfg.epochs * self.steps_per_epoch, self.device,
                                    train_module=train_module, log=self._print)
        if checkpoint_state is not None:
            self.trainer.load_state_dict(checkpoint_state["trainer"])
            self._restore_rng(checkpoint_state["rng"])
        # {"epoch", "step", "test_clean_acc"} of the epoch whose weights best.pt holds
        self.best = (checkpoint_state or {}).get("best")
        # The step at which --max-skipped-steps non-finite steps in a row were reached (-1: not yet),
        # kept on the device by every step and read only where the host syncs anyway.
        self._gave_up_at = torch.full((), -1, dtype=torch.int64, device=self.device)
        self._step_on_device = torch.full((), self.trainer.steps_done, dtype=torch.int64, device=self.device)
        # The per-epoch robust accuracy: the in-distribution attack of --attack (loader images: no input check).
        self.eval_attack = build_attack(cfg.attack, eps=cfg.eps_in, steps=cfg.steps_in, step_size=cfg.step_size_in,
                                        momentum=cfg.attack_momentum, objective="ce", norm=cfg.norm,
                                        backend=cfg.backend, check_inputs=False)

    def _loader_kind(self, images, spec: BatchSpec, said: set[str]) -> str:
        """--loader for these images. Logged: auto's choice with its rates and what it left out (a
        measurement each time, a choice by rule once: the out-distribution's usually repeats the
        in-distribution's), and a kind asked for by name whose batches are not the reference's."""
        choice = choose_loader_kind(self.config.loader, images, self.device, spec, workers=self.config.workers)
        line = choice.describe()
        if line and (choice.measured or line not in said):
            self._print(line)
            said.add(line)
        return choice.kind

    def _checkpoint_to_resume(self, resume: bool | str | Path) -> dict | None:
        default = self.run_dir / CHECKPOINT
        if not resume:
            if default.exists():
                raise UserError(f"--out {self.run_dir} already holds a run ({default}); "
                                "pass --resume to continue it or choose another --out")
            return None
        path = default if resume is True else Path(resume)
        state = load_checkpoint(path)
        allowed, refused = resume_differences(TrainConfig.from_dict(state["config"]), self.config)
        if refused:
            raise UserError(f"--resume {path}: not the checkpoint's settings ({'; '.join(refused)}); leave those "
                            "flags out to continue the run as it was, or start a new run with another --out")
        if path.parent.resolve() != self.run_dir.resolve():
            if self.ctx.is_main:  # the directory is rank 0's, locked
                self._check_copy_target(path)
            self.copied_from = path.parent
        if allowed:
            self._print(f"resuming with changed settings: {'; '.join(allowed)}")
        return state

    def _check_copy_target(self, checkpoint: Path) -> None:
        """A run continued outside its own directory goes to a new or empty one, never into another run."""
        found = sorted(p.name for p in self.run_dir.iterdir() if p.name != LOCK_FILE)
        if not found:
            return
        held = [name for name in (CHECKPOINT, CONFIG, METRICS, BEST) if name in found]
        what = f"holds another run ({self.run_dir / held[0]})" if held else f"is not empty ({found[0]})"
        raise UserError(f"--out {self.run_dir} {what}; --resume {checkpoint} continues the run in "
                        f"{checkpoint.parent}: leave out --out to continue it there, or name a new, empty "
                        "directory to continue a copy of it")

    def _copy_history(self, steps: int) -> None:
        """The copied run's history up to the checkpoint: its metrics lines and its best.pt."""
        source = self.copied_from
        lines = []
        if (source / METRICS).is_file():
            lines = [line for line in (source / METRICS).read_text().splitlines(keepends=True)
                     if _step_of(line) <= steps]
        atomic_write_text(self.run_dir / METRICS, "".join(lines))
        best_source = source / BEST
        if self.best is not None and best_source.is_file() and load_checkpoint(best_source).get("best") == self.best:
            atomic_copy(self.run_dir / BEST, _chunks(best_source))
        elif self.best is not None:  # no best.pt of this checkpoint's best epoch to copy: the copy finds its own
            self.best = None
        self._print(f"continuing a copy of {source} (its metrics up to step {steps}"
                    f"{' and best.pt' if self.best is not None else ''}) in {self.run_dir}; {source} is left as it was")

    def fit(self) -> dict:
        """Train until --epochs or --max-steps (or a stop signal); returns the last epoch's metrics."""
        # The handlers stay installed through the cleanup: a second SIGTERM while it runs (schedulers
        # signal every process of a job) is the same request, not a kill with the checkpoint written.
        # The process group goes last, after StopRequest has finished its pending all-reduce.
        try:
            with StopRequest(self.ctx) as stop:
                try:
                    return self._fit(stop)
                finally:
                    for loader in (self.train_loader, self.out_loader):
                        if hasattr(loader, "close"):  # streaming loaders own worker processes
                            loader.close()
                    self.log.close()
                    if self.tensorboard is not None:
                        self.tensorboard.close()
                    if self._lock is not None:
                        self._lock.release(clean=True)  # a directory made for a run that had nothing to do goes again
        finally:
            shutdown()

    def _fit(self, stop: StopRequest) -> dict:
        cfg, trainer = self.config, self.trainer
        total = cfg.epochs * self.steps_per_epoch
        stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
        if trainer.steps_done >= stop_at:
            source = self.copied_from or self.run_dir
            if trainer.steps_done >= total:
                why = (f"the run in {source} is finished ({trainer.steps_done} of {total} steps, --epochs "
                       f"{cfg.epochs}); to train longer, resume with more --epochs")
            else:
                why = f"the run in {source} is at step {trainer.steps_done} already (--max-steps {cfg.max_steps})"
            self._print(f"nothing to do: {why}; nothing was written")
            return {}
        if self.ctx.is_main:  # the lock made the directory
            if self.copied_from is not None:
                self._copy_history(trainer.steps_done)
            elif trainer.steps_done:
                self._drop_rows_after(trainer.steps_done)
            atomic_write_text(self.run_dir / CONFIG, json.dumps(cfg.to_dict(), indent=2) + "\n")
            self.log.start(self.run_dir)
            if cfg.tensorboard:
                self.tensorboard = TensorBoard(self.run_dir, trainer.steps_done)
        opening = f"resuming at step {trainer.steps_done}" if trainer.steps_done else "starting"
        ranks = f" x {self.ctx.world_size} processes" if self.ctx.is_distributed else ""
        if plots.missing(plots.CURVES):
            self._print(plots.missing(plots.CURVES))
        self._print(f"{opening}: {cfg.mode} training of {cfg.arch} on {cfg.dataset} "
                    f"({self.steps_per_epoch} steps/epoch, {stop_at} steps) on {self.device}{ranks}, "
                    f"{_loader_names(self.loader_kinds)} -> {self.run_dir}")
        last = {}
        while trainer.steps_done < stop_at:
            epoch, start = divmod(trainer.steps_done, self.steps_per_epoch)
            end = min(self.steps_per_epoch, start + stop_at - trainer.steps_done)
            last = self._train_epoch(epoch, start, end, stop)
            improved = self._note_best(last)
            self._save()
            if improved:
                self._save(BEST)
            if last.get("complete") and self.ctx.is_main:
                self._keep_history(epoch + 1)
            if stop.stopped and trainer.steps_done < stop_at:
                self.stopped_by = stop.signal_name
                self._print(f"stopped by {stop.signal_name} after step {trainer.steps_done}; checkpoint "
                            f"{self.run_dir / CHECKPOINT} saved; continue with --resume")
                return last
        self._print(f"done: {trainer.steps_done} steps; checkpoint {self.run_dir / CHECKPOINT}")
        return last

    def _train_epoch(self, epoch: int, start: int, end: int, stop: StopRequest) -> dict:
        cfg, trainer = self.config, self.trainer
        progress = Progress(end - start, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                            stream=None if self.ctx.is_main else open(os.devnull, "w"))
        sums: dict[str, torch.Tensor] = {}
        step_scalars = StepScalars(cfg.log_every, cfg.batch_size, self.ctx)
        began = time.perf_counter()
        stopped = False
        for index in range(start, end):
            x, y = self.train_loader.batch(epoch, index)
            z = self._out_batch(trainer.steps_done)
            metrics = trainer.step(x, y, z)
            accumulate(sums, metrics)
            step_scalars.add(metrics)
            self._watch_skipped_steps()
            # Reading metrics syncs with the GPU; do it only every 20 steps.
            postfix = None
            if (index + 1 - start) % 20 == 0 or index + 1 == end:
                self._check_skipped_steps()
                kept = max(float(sums["kept"]), 1.0)
                postfix = f"loss {float(sums['loss']) / kept:.3f} adv-acc {100 * float(sums['adv_acc']) / kept:.1f}%"
            progress.update(1, postfix)
            row = step_scalars.row(epoch + 1, trainer.steps_done, float(metrics["lr"]))
            if row is not None:
                self._record(row)
            if cfg.checkpoint_every and trainer.steps_done % cfg.checkpoint_every == 0 and index + 1 < end:
                self._save()
                step_scalars.restart_clock()
            if stop.at_step_boundary():
                stopped, end = True, index + 1
                break
        progress.close()
        seconds = time.perf_counter() - began
        steps = end - start
        sums = all_reduce_mean(sums, self.ctx)
        record = {"kind": "epoch", "epoch": epoch + 1, "step": trainer.steps_done, "steps": steps,
                  "complete": end == self.steps_per_epoch, **means(sums, steps)}
        record["lr"] = float(metrics["lr"])
        record["seconds"] = round(seconds, 2)
        record["images_per_s"] = round(steps * cfg.batch_size / seconds, 1)
        # A preempted run has seconds left: checkpoint first, evaluate after resuming.
        if not stopped and is_test_epoch(epoch + 1, cfg.epochs, cfg.test_every):
            record.update(self._evaluate())
        self._record(record)
        self._print(_summary_line(record, cfg))
        if self.ctx.is_main and plots.missing(plots.CURVES) is None:
            plots.training_curves(_rows(self.run_dir / METRICS), self.run_dir / plots.CURVES)
        return record

    def _record(self, record: dict) -> None:
        """A metrics row: into metrics.jsonl and TensorBoard (rank 0)."""
        if not self.ctx.is_main:
            return
        self._append_metrics(record)
        if self.tensorboard is not None:
            self.tensorboard.add(record)

    def _drop_rows_after(self, step: int) -> None:
        """Resuming in place: the rows a crashed run logged after its checkpoint go (the resumed run
        logs those steps again), so metrics.jsonl holds each step once."""
        path = self.run_dir / METRICS
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _step_of(line) <= step]
        if len(kept) < len(lines):
            atomic_write_text(path, "".join(kept))

    def _append_metrics(self, record: dict) -> None:
        path = self.run_dir / METRICS
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as error:
            raise file_error(path, error, advice=f"{self.run_dir / CHECKPOINT} holds the last checkpoint; "
                                                 "fix that, then continue with --resume") from None

    def _watch_skipped_steps(self) -> None:
        """Note on the device (no sync) the step at which the run had --max-skipped-steps non-finite
        steps in a row, the first time it happens."""
        self._step_on_device += 1
        reached = (self.trainer.skipped_in_a_row >= self.config.max_skipped_steps) & (self._gave_up_at < 0)
        self._gave_up_at = torch.where(reached, self._step_on_device, self._gave_up_at)

    def _check_skipped_steps(self) -> None:
        """Stop a run whose steps keep failing (non-finite loss or gradients), at the progress interval
        and before every checkpoint: the steps computed after the limit are never saved, so the run
        ends as if it had stopped exactly there."""
        gave_up_at = int(self._gave_up_at)
        if gave_up_at < 0:
            return
        limit = self.config.max_skipped_steps
        checkpoint = self.run_dir / CHECKPOINT
        kept = f"; {checkpoint} holds the last checkpoint's weights" if checkpoint.exists() else ""
        raise TrainingStopped(
            f"steps {gave_up_at - limit + 1}-{gave_up_at}: {limit} steps in a row had a non-finite loss or gradient "
            f"and were skipped (--max-skipped-steps {limit}){kept}; {non_finite_advice(self.trainer.speed.precision)}")

    def _out_batch(self, step: int):
        if self.out_loader is None:
            return None
        out_epoch, index = divmod(step, len(self.out_loader))
        return self.out_loader.batch(out_epoch, index)[0]

    def _evaluate(self) -> dict:
        """Test accuracy of the EMA model: clean on the whole test set, robust on the first eval_samples.

        Rank 0 evaluates; the other ranks wait for it (and get its numbers) so they leave together.
        """
        cfg, model = self.config, self.trainer.ema.model
        result = {}
        if self.ctx.is_main:
            result["test_clean_acc"] = clean_accuracy(model, self.test_loader.epoch(0))
            if cfg.eval_samples > 0 and cfg.eps_in > 0 and cfg.steps_in > 0:
                batches = _first_samples(self.test_loader.epoch(0), cfg.eval_samples)
                result["test_robust_acc"] = robust_accuracy(model, batches, self.eval_attack)
        if self.ctx.is_distributed:
            shared = [result]
            dist.broadcast_object_list(shared, src=0)
            result = shared[0]
        return result

    def _note_best(self, record: dict) -> bool:
        """Whether this epoch's EMA has the best clean test accuracy so far; if so, self.best says so."""
        accuracy = record.get("test_clean_acc")  # absent when not tested (--test-every) or cut short by a signal
        if accuracy is None or (self.best is not None and accuracy <= self.best["test_clean_acc"]):
            return False
        self.best = {"epoch": record["epoch"], "step": record["step"], "test_clean_acc": accuracy}
        return True

    def _save(self, name: str = CHECKPOINT) -> None:
        """Every rank contributes its RNG state; rank 0 writes the file; all leave together."""
        self._check_skipped_steps()  # a run past --max-skipped-steps saves nothing after that step
        rng = _rng_state()
        if self.ctx.is_distributed:
            rng_per_rank = [None] * self.ctx.world_size
            dist.all_gather_object(rng_per_rank, rng)
        else:
            rng_per_rank = [rng]
        if self.ctx.is_main:
            save_checkpoint(self.run_dir / name, {
                "config": self.config.to_dict(),
                "trainer": self.trainer.state_dict(),
                "rng": rng_per_rank,
                "world_size": self.ctx.world_size,
                "best": self.best,
            })
        if self.ctx.is_distributed:
            dist.barrier()

    def _keep_history(self, epoch: int) -> None:
        """--checkpoint-epochs / --keep-last: a copy of the checkpoint just written (its bytes, checksum
        included) as checkpoint-epoch-<epoch>.pt; then the oldest copies beyond --keep-last are removed
        (only files of that name, and only once the new copy is complete)."""
        cfg = self.config
        every = cfg.checkpoint_epochs or (1 if cfg.keep_last else None)
        if every is None or epoch % every:
            return
        atomic_copy(history_checkpoint(self.run_dir, epoch), _chunks(self.run_dir / CHECKPOINT))
        if cfg.keep_last:
            for old in history_checkpoints(self.run_dir)[:-cfg.keep_last]:
                old.unlink(missing_ok=True)

    def _restore_rng(self, saved) -> None:
        per_rank = saved if isinstance(saved, list) else [saved]  # one dict: single-process checkpoints
        if len(per_rank) == self.ctx.world_size:
            _set_rng_state(per_rank[self.ctx.rank])
        else:  # another process count: data order is global, only random attack starts change
            self._print(f"note: checkpoint written by {len(per_rank)} processes, resumed by {self.ctx.world_size}; "
                        "the data order continues exactly, attack random starts are re-seeded")

    def _print(self, line: str) -> None:
        self.log.print(line)


def history_checkpoint(run_dir: Path, epoch: int) -> Path:
    """The copy --checkpoint-epochs keeps of the checkpoint at the end of `epoch`."""
    return Path(run_dir) / HISTORY.format(epoch=epoch)


def history_checkpoints(run_dir: Path) -> list[Path]:
    """The history copies in run_dir, oldest epoch first."""
    found = [(int(m.group(1)), path) for path in Path(run_dir).iterdir()
             if (m := re.fullmatch(HISTORY.format(epoch=r"(\d+)").replace(".", r"\."), path.name))]
    return [path for _, path in sorted(found)]


def is_test_epoch(epoch: int, epochs: int, every: int) -> bool:
    """Whether the EMA is tested after `epoch` (1-based) of `epochs`: the authors' rule for their
    --test_epochs `every` (train_type.py tests 0-based epoch e when e % every == 0 or e / epochs >= 0.8;
    5 e >= 4 epochs is that comparison without floating point)."""
    begun = epoch - 1  # the authors' 0-based epoch: the epochs completed before this one
    return begun % every == 0 or 5 * begun >= 4 * epochs


def non_finite_advice(precision: str) -> str:
    """What to try when the steps keep diverging, for a run computing in `precision` (fp32, bf16, fp16)."""
    return {"fp16": "lower --lr, or use --amp-dtype bf16 (fp16 overflows sooner)",
            "bf16": "lower --lr, or try --no-amp"}.get(precision, "lower --lr")


def _loader_names(kinds: list[str]) -> str:
    if len(set(kinds)) == 1:
        return f"{LOADERS[kinds[0]].title} loader"
    return f"{LOADERS[kinds[0]].title} loader (in), {LOADERS[kinds[1]].title} loader (out)"


def _rows(path: Path) -> list[dict]:
    """The records of a metrics.jsonl (a line cut by a crash is none)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; a line that is not a record counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _chunks(path: Path, size: int = 8 << 20):
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def _first_samples(batches, limit: int):
    seen = 0
    for x, y in batches:
        if seen >= limit:
            return
        take = min(limit - seen, y.shape[0])
        yield x[:take], y[:take]
        seen += take


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _summary_line(r: dict, cfg: TrainConfig) -> str:
    parts = [f"epoch {r['epoch']}/{cfg.epochs}", f"loss {r['loss']:.4f}",
             f"train clean {100 * r['clean_acc']:.1f}%"]
    if MODES[cfg.mode].attacks_in:
        parts.append(f"adv {100 * r['adv_acc']:.1f}%")
    if "out_conf" in r:
        parts.append(f"out-conf {r['out_conf']:.3f}")
    if "skipped_steps" in r and r["skipped_steps"]:
        parts.append(f"skipped {r['skipped_steps']} non-finite steps")
    if "test_clean_acc" in r:
        parts.append(f"test clean {100 * r['test_clean_acc']:.1f}%")
    if "test_robust_acc" in r:
        parts.append(f"robust({NORMS[cfg.norm].title} {cfg.eps_in:.4g}, {cfg.steps_in} steps) "
                     f"{100 * r['test_robust_acc']:.1f}%")
    parts.append(f"[{r['seconds']:.0f}s, {r['images_per_s']:.0f} img/s]")
    return " | ".join(parts)
