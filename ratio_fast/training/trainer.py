"""RatioTrainer: one training step at a time of a --mode row (RATIO by default), with EMA,
cosine schedule, AMP and state.

    trainer = RatioTrainer(model, TrainConfig(), total_steps=epochs * len(loader), device="cuda")
    for x, y, z in batches:             # in-dist images + labels, out-dist images, all in [0,1]
        metrics = trainer.step(x, y, z)  # dict of 0-dim tensors; reading them syncs, so do it rarely

Per step, for RATIO: the in-distribution attack (maximize CE within eps_in) and the
out-distribution attack (maximize KL(U || p) within eps_out) with the model in eval mode, then
ONE train-mode forward on the joined batch (BatchNorm sees both; with --bn-groups N, N slices of
it, as the authors' nn.DataParallel on N GPUs: models/grouped_batchnorm.py) with the loss
0.5 * CE(x_adv) + 0.5 * lam * KL(U || p(z_adv)), SGD-Nesterov, per-step cosine LR, EMA.
Every --mode is a row of choices.MODES saying which attacks run, which images the train forward
sees (those of x, x_adv, z, z_adv its loss needs, in that order) and the weights of the loss
(attacks/objectives.mode_loss); the step reads the row. The loop below is the whole algorithm.

Speed (see speed.py for the switches): the attack phase (attack_phase.AttackPhase) runs the
row's attacks under one of its schedules, optionally replayed from a CUDA graph and through a
torch.compile'd model. A step whose loss or gradients are not finite is skipped on the device
(no host sync): weights, momentum, BatchNorm statistics and EMA stay bit-identical, and
`skipped_in_a_row` counts such steps until a finite one.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from ..attacks.named import build_attack
from ..attacks.objectives import OBJECTIVES, TrainLogits, cross_entropy, kl_to_uniform, mode_loss
from ..choices import MODES, SEQUENTIAL
from ..config import TrainConfig
from ..measure import Measured, Timer
from ..models import keep_first_conv_fp32
from ..models.grouped_batchnorm import group_batchnorm, grouped_batch, split_grouped
from ..models.precision import ieee_fp32_convolutions
from .attack_phase import AttackPhase
from .ema import ModelEMA
from .speed import resolve_speed

__all__ = ["RatioTrainer", "cosine_lr", "training_attacks"]


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from base_lr to 0 over total_steps, evaluated per optimizer step."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


class RatioTrainer:
    """The RATIO step. `model` is trained in place; `trainer.ema.model` is its average.

    train_module: the module for the train-mode forward, e.g. a DistributedDataParallel wrapper
    of `model` (attacks and EMA use `model` itself). schedule_timer, schedule_cache: how
    attack_schedule 'auto' measures (default: CUDA events on the first batch) and where it keeps
    the answer (default: attacks/schedule.default_cache_path()). log: called with one line when
    'auto' has chosen.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, total_steps: int, device="cpu", *,
                 train_module: torch.nn.Module | None = None, schedule_timer: Timer | None = None,
                 schedule_cache: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.config = config
        self.mode = MODES[config.mode]  # which images each term of the loss sees, and its weight
        self.device = torch.device(device)
        self.speed = speed = resolve_speed(config, self.device)
        self.total_steps = total_steps
        self.steps_done = 0
        self.memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        if speed.fp32_first_conv:
            keep_first_conv_fp32(self.model)
        group_batchnorm(self.model, config.bn_groups)  # --bn-groups: the authors' DataParallel BatchNorm
        # The attacks and the train forward call `forward_model`; EMA, state and DDP use `model`.
        self.forward_model = torch.compile(self.model, dynamic=False) if speed.compile else self.model
        if train_module is None:
            self.train_module = self.forward_model
        else:  # e.g. DDP around `model`: compiled the same way, so multi-GPU runs keep the speed-up
            self.train_module = torch.compile(train_module, dynamic=False) if speed.compile else train_module
        self.ema = ModelEMA(self.model, config.ema_decay)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
            weight_decay=config.weight_decay, fused=True if speed.fused_optimizer else None,
        )
        if config.momentum > 0:
            # Zero momentum buffers from the start make the first step an ordinary one (0.9 * 0 + g
            # is exactly g), so a skipped first step leaves no half-made optimizer state.
            for p in self.model.parameters():
                self.optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=speed.amp_dtype == torch.float16)
        self.attack_in, self.attack_out = training_attacks(config, speed.input_grad_only)
        self.attack_phase = None  # a row without attacks (plain, ceda) has no attack phase
        if self.attack_in is not None or self.attack_out is not None:
            self.attack_phase = AttackPhase(self.model, self.forward_model, self.attack_in, self.attack_out, speed,
                                            self.device, mode=self.mode, timer=schedule_timer,
                                            cache_path=schedule_cache, log=log)
        # BatchNorm statistics change in the train forward, before the step is known to be finite.
        self._running_buffers = [b for b in self.model.buffers()]
        self.skipped_in_a_row = torch.zeros((), device=self.device)

    @property
    def attack_schedule(self) -> str:
        """The schedule the attacks run under: 'auto' until the first step has chosen one;
        sequential where the row has one attack or none."""
        return SEQUENTIAL if self.attack_phase is None else self.attack_phase.schedule

    @property
    def schedule_choice(self) -> Measured | None:
        """What 'auto' measured (or read from the cache) on the first step; None otherwise."""
        return None if self.attack_phase is None else self.attack_phase.choice

    def fp32_convolutions(self):
        """The span of a step: fp32 convolutions in IEEE fp32 (not cuDNN's TF32) when the settings
        call for fp32 (no AMP, or the fp32 first convolution under it), torch's default otherwise."""
        return ieee_fp32_convolutions() if self.speed.ieee_fp32_convs else nullcontext()

    def autocast(self):
        """Autocast to the AMP dtype, or nothing in fp32 (SpeedSettings.autocast)."""
        return self.speed.autocast(self.device)

    # ---- the step ----------------------------------------------------------------------------

    def _on_device(self, x, y, z):
        if self.mode.uses_out_data and z is None:
            raise ValueError(f"mode {self.mode.name!r} needs an out-distribution batch z")
        x = x.to(self.device, memory_format=self.memory_format)
        z = z.to(self.device, memory_format=self.memory_format) if self.mode.uses_out_data else None
        return x, y.to(self.device), z

    def _attacked(self, x, y, z):
        """(clean logits or None, x_adv or None, z_adv or None): the row's attacks, under the schedule."""
        if self.attack_phase is None:
            return None, None, None
        return self.attack_phase(x, y, z)

    def adversarial_examples(self, x, y, z=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(x_adv, z_adv) that step() would train on now, None where the row has no such attack.
        Under CUDA graphs they are the graph's output tensors, overwritten by the next call or
        step: clone them to keep them."""
        with self.fp32_convolutions():
            return self._attacked(*self._on_device(x, y, z))[1:]

    def step(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One optimizer step on an in-distribution batch (x, y) and an out-distribution batch z."""
        with self.fp32_convolutions():  # the attacks and the train step, forward and backward
            return self._step(x, y, z)

    def _train_images(self, x, x_adv, z, z_adv) -> TrainLogits:
        """The images of each kind the row's loss needs (TrainLogits' fields), None for the others."""
        mode = self.mode
        return TrainLogits(x if mode.trains_on_clean_in(self.config.train_clean) else None, x_adv,
                           z if mode.trains_on_clean_out() else None, z_adv)

    def _step(self, x, y, z) -> dict[str, torch.Tensor]:
        cfg, model = self.config, self.model
        x, y, z = self._on_device(x, y, z)
        clean_logits, x_adv, z_adv = self._attacked(x, y, z)
        images = self._train_images(x, x_adv, z, z_adv)
        kinds = [name for name in TrainLogits.__dataclass_fields__ if getattr(images, name) is not None]
        parts = [getattr(images, name) for name in kinds]

        model.train()
        statistics_before = [b.clone() for b in self._running_buffers]
        with self.autocast():
            logits = self.train_module(grouped_batch(parts, cfg.bn_groups))
            split = split_grouped(logits, [part.shape[0] for part in parts], cfg.bn_groups)
            train_logits = TrainLogits(**{name: split[kinds.index(name)] if name in kinds else None
                                          for name in TrainLogits.__dataclass_fields__})
            loss = mode_loss(self.mode, train_logits, y, cfg.lam, cfg.trades_beta, cfg.trades_beta_out,
                             cfg.train_clean)

        lr = cosine_lr(cfg.lr, self.steps_done, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # fp16: true gradients (and the scaler's own inf check)
        skipped = self._not_finite(loss)
        self._optimizer_step(skipped)
        self.scaler.update()
        _restore_where(skipped, self._running_buffers, statistics_before)
        self.ema.update(model, skipped)
        self.skipped_in_a_row = (self.skipped_in_a_row + 1.0) * skipped
        self.steps_done += 1

        with torch.no_grad():
            in_logits = train_logits.adversarial_in if x_adv is not None else train_logits.clean_in
            adv_acc = (in_logits.argmax(1) == y).float().mean()
            if clean_logits is None:
                clean_logits = train_logits.clean_in if train_logits.clean_in is not None else in_logits
            metrics = {
                "loss": loss.detach().float(),
                # unweighted terms: CE of the in-distribution images trained on (adversarial where
                # the row attacks them), KL(U || p) of the out-distribution ones
                "loss_in": cross_entropy(in_logits, y).mean(),
                "adv_acc": adv_acc,
                "clean_acc": (clean_logits.argmax(1) == y).float().mean(),
                "lr": torch.tensor(lr),
                "skipped": skipped,
            }
            logits_out = train_logits.adversarial_out if z_adv is not None else train_logits.clean_out
            if logits_out is not None:
                metrics["out_conf"] = logits_out.float().softmax(1).amax(1).mean()
                metrics["loss_out"] = kl_to_uniform(logits_out).mean()
        return metrics

    def _not_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """0-dim fp32 on the device: 1.0 if the loss or any gradient has an inf or NaN, else 0.0."""
        found = torch.zeros(1, device=self.device)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:  # the check AMP's GradScaler uses (scaling by 1 leaves the gradients as they are)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones(1, device=self.device))
        return torch.maximum(found, (~torch.isfinite(loss.detach())).float()).reshape(())

    def _optimizer_step(self, skipped: torch.Tensor) -> None:
        """SGD step that changes nothing (weights or momentum) where `skipped` is 1."""
        if self.speed.fused_optimizer:
            # The fused kernel reads `found_inf` on the device and then leaves everything as it
            # was, the way GradScaler hands it its own overflow flag.
            self.optimizer.found_inf = skipped.reshape(1)
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
            return
        params = [p for p in self.model.parameters() if p.grad is not None]
        momentum = [self.optimizer.state[p]["momentum_buffer"] for p in params if p in self.optimizer.state]
        state = params + momentum
        before = [t.clone() for t in state]
        self.optimizer.step()
        _restore_where(skipped, state, before)

    # ---- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.steps_done = int(state["steps_done"])


@torch.no_grad()
def _restore_where(skipped: torch.Tensor, tensors: list[torch.Tensor], before: list[torch.Tensor]) -> None:
    """Where `skipped` (0-dim, 0/1) is 1, put each tensor back to its `before` value, bit for bit."""
    keep_old = skipped.bool()
    for t, old in zip(tensors, before):
        t.copy_(torch.where(keep_old, old, t))


def training_attacks(config: TrainConfig, input_grad_only: bool = True):
    """The in- and out-distribution attacks of --attack (attacks/named.py), each maximizing its
    term's objective of --mode; None where the row has no such attack."""
    mode = MODES[config.mode]
    # No input check in the step (it would synchronize with the host, or break a CUDA graph capture).
    common = dict(momentum=config.attack_momentum, norm=config.norm, backend=config.backend,
                  input_grad_only=input_grad_only, check_inputs=False)

    def attack(objective, eps, steps, step_size):
        return build_attack(config.attack, eps=eps, steps=steps, step_size=step_size, objective=objective,
                            start_noise=OBJECTIVES[objective].start_noise, **common)

    return (attack(mode.in_attack, config.eps_in, config.steps_in, config.step_size_in) if mode.attacks_in else None,
            attack(mode.out_attack, config.eps_out, config.steps_out, config.step_size_out) if mode.attacks_out
            else None)
