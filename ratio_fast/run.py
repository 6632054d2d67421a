"""A whole training run: data, model, trainer, epochs, evaluation, logs and checkpoints.

The run directory holds `config.json` (the resolved settings), `metrics.jsonl` (one line per
epoch) and `checkpoint.pt` (model, EMA, optimizer, scaler, RNG and position, rewritten
atomically after every epoch and when the run stops early). Batch b of epoch e is a pure
function of (seed, e, b), so a resumed run continues exactly where the checkpoint was taken.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from .attacks import L2PGD
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import DeviceLoader, load_in_distribution, load_out_distribution
from .errors import UserError
from .evaluate import clean_accuracy, robust_accuracy
from .models import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, create_model
from .progress import Progress
from .train import RatioTrainer, wants_channels_last

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: '{name}' is not a device (try cpu, cuda or cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device (use --device cpu)")
    return device


class Run:
    """Everything a training run needs, built from a TrainConfig; `fit()` runs it."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, resume: bool | str = False, log=None):
        self.config = cfg = config.validate()
        self.run_dir = Path(run_dir)
        self.log = log if log is not None else sys.stdout
        self.device = resolve_device(cfg.device)
        if cfg.backend == "triton" and self.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise UserError("--backend triton needs a CUDA device (or TRITON_INTERPRET=1 to run the kernels "
                            "in Triton's interpreter on the CPU)")
        checkpoint_state = self._checkpoint_to_resume(resume)

        torch.manual_seed(cfg.seed)
        train = load_in_distribution(cfg.dataset, cfg.data_dir, train=True,
                                     synthetic_size=cfg.synthetic_size, seed=cfg.seed)
        test = load_in_distribution(cfg.dataset, cfg.data_dir, train=False, seed=cfg.seed)
        if len(train.labels) < cfg.batch_size:
            raise UserError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(train.labels)} images)")
        channels_last = wants_channels_last(cfg, self.device)
        self.train_loader = DeviceLoader(train.images, train.labels, cfg.batch_size, self.device, seed=cfg.seed,
                                         augment=cfg.augment, channels_last=channels_last)
        self.test_loader = DeviceLoader(test.images, test.labels, 256, self.device, seed=cfg.seed, augment=False,
                                        shuffle=False, drop_last=False, channels_last=channels_last)
        self.out_loader = None
        if cfg.mode == "ratio":
            out_images = load_out_distribution(cfg.out_data or _default_out_data(cfg.dataset), cfg.data_dir,
                                               in_name=cfg.dataset, seed=cfg.seed)
            if len(out_images) < cfg.batch_size:
                raise UserError(f"--out-data has {len(out_images)} images, fewer than --batch-size {cfg.batch_size}")
            # A seed of its own, so the out-distribution stream does not mirror the in-distribution one.
            self.out_loader = DeviceLoader(out_images, None, cfg.batch_size, self.device, seed=cfg.seed + 1,
                                           augment=cfg.augment, channels_last=channels_last)

        self.steps_per_epoch = len(self.train_loader)
        mean, std = (CIFAR100_MEAN, CIFAR100_STD) if cfg.dataset == "cifar100" else (CIFAR10_MEAN, CIFAR10_STD)
        model = create_model(cfg.arch, num_classes=train.num_classes, mean=mean, std=std)
        self.trainer = RatioTrainer(model, cfg, cfg.epochs * self.steps_per_epoch, self.device)
        if checkpoint_state is not None:
            self.trainer.load_state_dict(checkpoint_state["trainer"])
            _set_rng_state(checkpoint_state["rng"])
        self.eval_attack = L2PGD(cfg.eps_in, cfg.steps_in, cfg.step_size_in, momentum=cfg.attack_momentum,
                                 keep_best=True, backend=cfg.backend)

    def _checkpoint_to_resume(self, resume: bool | str) -> dict | None:
        default = self.run_dir / CHECKPOINT
        if not resume:
            if default.exists():
                raise UserError(f"--out {self.run_dir} already holds a run ({default}); "
                                "pass --resume to continue it or choose another --out")
            return None
        path = default if resume is True else Path(resume)
        state = load_checkpoint(path, arch=self.config.arch)
        if state["config"]["dataset"] != self.config.dataset:
            raise UserError(f"checkpoint {path} was trained on --dataset {state['config']['dataset']}, "
                            f"not {self.config.dataset}")
        return state

    def fit(self) -> dict:
        """Train until --epochs or --max-steps; returns the last epoch's metrics."""
        cfg, trainer = self.config, self.trainer
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        total = cfg.epochs * self.steps_per_epoch
        stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
        opening = f"resuming at step {trainer.steps_done}" if trainer.steps_done else "starting"
        self._print(f"{opening}: {cfg.mode} training of {cfg.arch} on {cfg.dataset} "
                    f"({self.steps_per_epoch} steps/epoch, {stop_at} steps) on {self.device} -> {self.run_dir}")
        last = {}
        while trainer.steps_done < stop_at:
            epoch, start = divmod(trainer.steps_done, self.steps_per_epoch)
            end = min(self.steps_per_epoch, start + stop_at - trainer.steps_done)
            last = self._train_epoch(epoch, start, end)
            self._save()
        self._print(f"done: {trainer.steps_done} steps; checkpoint {self.run_dir / CHECKPOINT}")
        return last

    def _train_epoch(self, epoch: int, start: int, end: int) -> dict:
        cfg, trainer = self.config, self.trainer
        progress = Progress(end - start, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        sums: dict[str, torch.Tensor] = {}
        began = time.perf_counter()
        for index in range(start, end):
            x, y = self.train_loader.batch(epoch, index)
            z = self._out_batch(trainer.steps_done)
            metrics = trainer.step(x, y, z)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            done = index + 1 - start
            # Reading metrics syncs with the GPU; do it only every 20 steps.
            postfix = None
            if done % 20 == 0 or index + 1 == end:
                postfix = f"loss {float(sums['loss']) / done:.3f} adv-acc {100 * float(sums['adv_acc']) / done:.1f}%"
            progress.update(1, postfix)
        progress.close()
        seconds = time.perf_counter() - began
        steps = end - start
        record = {"epoch": epoch + 1, "step": trainer.steps_done, "steps": steps, "complete": end == self.steps_per_epoch}
        record.update({key: float(value) / steps for key, value in sums.items()})
        record["lr"] = float(metrics["lr"])
        record["seconds"] = round(seconds, 2)
        record["images_per_s"] = round(steps * cfg.batch_size / seconds, 1)
        record.update(self._evaluate())
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._print(_summary_line(record, cfg))
        return record

    def _out_batch(self, step: int):
        if self.out_loader is None:
            return None
        out_epoch, index = divmod(step, len(self.out_loader))
        return self.out_loader.batch(out_epoch, index)[0]

    def _evaluate(self) -> dict:
        """Test accuracy of the EMA model: clean on the whole test set, robust on the first eval_samples."""
        cfg, model = self.config, self.trainer.ema.model
        result = {"test_clean_acc": clean_accuracy(model, self.test_loader.epoch(0))}
        if cfg.eval_samples > 0 and cfg.eps_in > 0 and cfg.steps_in > 0:
            batches = _first_samples(self.test_loader.epoch(0), cfg.eval_samples)
            result["test_robust_acc"] = robust_accuracy(model, batches, self.eval_attack)
        return result

    def _save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, {
            "config": self.config.to_dict(),
            "trainer": self.trainer.state_dict(),
            "rng": _rng_state(),
        })

    def _print(self, line: str) -> None:
        print(line, file=self.log, flush=True)


def _default_out_data(dataset: str) -> str:
    """Offline-friendly defaults; pass --out-data 300K_random_images.npy for the authors' setting."""
    return {"synthetic": "synthetic", "cifar10": "cifar100", "cifar100": "cifar10"}.get(dataset, "synthetic")


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
    if cfg.mode != "plain":
        parts.append(f"adv {100 * r['adv_acc']:.1f}%")
    if "out_conf" in r:
        parts.append(f"out-conf {r['out_conf']:.3f}")
    parts.append(f"test clean {100 * r['test_clean_acc']:.1f}%")
    if "test_robust_acc" in r:
        parts.append(f"robust(L2 {cfg.eps_in}, {cfg.steps_in} steps) {100 * r['test_robust_acc']:.1f}%")
    parts.append(f"[{r['seconds']:.0f}s, {r['images_per_s']:.0f} img/s]")
    return " | ".join(parts)
