"""RatioTrainer: one RATIO optimizer step at a time, with EMA, cosine schedule, AMP and state.

    trainer = RatioTrainer(model, TrainConfig(), total_steps=epochs * len(loader), device="cuda")
    for x, y, z in batches:             # in-dist images + labels, out-dist images, all in [0,1]
        metrics = trainer.step(x, y, z)  # dict of 0-dim tensors; reading them syncs, so do it rarely

Per step: the in-distribution attack (maximize CE within eps_in) and the out-distribution
attack (maximize KL(U || p) within eps_out) with the model in eval mode, then ONE train-mode
forward on the joined batch (BatchNorm sees both) with the loss
0.5 * CE(x_adv) + 0.5 * lam * KL(U || p(z_adv)), SGD-Nesterov, per-step cosine LR, EMA.
Mode 'at' drops the out-distribution term (plain L2 adversarial training); mode 'plain' also
drops the in-distribution attack (clean training). The loop below is the whole algorithm.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from .attacks import L2PGD
from .config import TrainConfig
from .ema import ModelEMA
from .losses import ratio_loss


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from base_lr to 0 over total_steps, evaluated per optimizer step."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def wants_channels_last(config: TrainConfig, device: torch.device) -> bool:
    """channels_last unless the config says otherwise: on for CUDA (tensor cores), off for CPU."""
    return device.type == "cuda" if config.channels_last is None else config.channels_last


class RatioTrainer:
    def __init__(self, model: torch.nn.Module, config: TrainConfig, total_steps: int, device="cpu"):
        self.config = config
        self.device = torch.device(device)
        self.total_steps = total_steps
        self.steps_done = 0
        self.memory_format = torch.channels_last if self.uses_channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.ema = ModelEMA(self.model, config.ema_decay)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
            weight_decay=config.weight_decay, fused=True if self.device.type == "cuda" else None,
        )
        use_fp16 = config.amp and config.amp_dtype == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_fp16)
        self.attack_in = L2PGD(config.eps_in, config.steps_in, config.step_size_in,
                               momentum=config.attack_momentum, keep_best=True, objective="ce",
                               backend=config.backend)
        self.attack_out = L2PGD(config.eps_out, config.steps_out, config.step_size_out,
                                momentum=config.attack_momentum, keep_best=True, objective="kl_uniform",
                                backend=config.backend)

    @property
    def uses_channels_last(self) -> bool:
        return wants_channels_last(self.config, self.device)

    def autocast(self):
        """bf16/fp16 autocast when AMP is on; the attacks keep their perturbation in fp32 regardless."""
        if not self.config.amp:
            return nullcontext()
        dtype = torch.bfloat16 if self.config.amp_dtype == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def step(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One optimizer step on an in-distribution batch (x, y) and an out-distribution batch z."""
        cfg, model = self.config, self.model
        if cfg.mode == "ratio" and z is None:
            raise ValueError("mode 'ratio' needs an out-distribution batch z")
        x = x.to(self.device, memory_format=self.memory_format)
        y = y.to(self.device)
        with self.autocast():
            if cfg.mode == "plain":
                x_adv = x
            else:
                with torch.no_grad():  # clean accuracy in eval mode, as the attack sees the model
                    model.eval()
                    clean_logits = model(x)
                    model.train()
                x_adv = self.attack_in(model, x, y)
            z_adv = None
            if cfg.mode == "ratio":
                z = z.to(self.device, memory_format=self.memory_format)
                z_adv = self.attack_out(model, z)

        model.train()
        n_in = x_adv.shape[0]
        with self.autocast():
            batch = x_adv if z_adv is None else torch.cat([x_adv, z_adv])
            logits = model(batch)
            logits_in, logits_out = logits[:n_in], (logits[n_in:] if z_adv is not None else None)
            loss = ratio_loss(logits_in, y, logits_out, cfg.lam)

        lr = cosine_lr(cfg.lr, self.steps_done, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(model)
        self.steps_done += 1

        with torch.no_grad():
            adv_acc = (logits_in.argmax(1) == y).float().mean()
            metrics = {
                "loss": loss.detach().float(),
                "adv_acc": adv_acc,
                "clean_acc": adv_acc if cfg.mode == "plain" else (clean_logits.argmax(1) == y).float().mean(),
                "lr": torch.tensor(lr),
            }
            if logits_out is not None:
                metrics["out_conf"] = logits_out.float().softmax(1).amax(1).mean()
        return metrics

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
