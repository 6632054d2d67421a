"""The plain reference: RATIO as the authors' code runs it, for timing the engine against.

Plain PyTorch throughout, as in M4xim4l/InNOutRobustness: fp32, eager, NCHW, the in- and
out-distribution attacks one after the other, the ArgminPGD step written out in torch ops
(momentum on the L1-normalized gradient, L2-normalized step, projection, box clamp, best
iterate kept with boolean indexing), one train-mode forward on the joined batch, SGD-Nesterov
stepping one tensor at a time, and an EMA updated tensor by tensor. Nothing from
ratio_fast's ops, attacks, losses or trainer is used, so it is also an independent
implementation to check the engine against (tests/test_reference_agreement.py).

    reference = ReferenceRatio(model, TrainConfig(...), total_steps, device="cuda")
    loss = reference.step(x, y, z)
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F


def cross_entropy_per_sample(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


def kl_uniform_per_sample(logits, y=None):
    """KL(U || softmax(logits)) per sample."""
    return -F.log_softmax(logits, dim=1).mean(dim=1) - math.log(logits.shape[1])


def argmin_pgd(model, x, y, loss_fn, eps, steps, step_size, momentum, norm="l2"):
    """The authors' ArgminPGD in L2 or L-infinity (`norm` 'linf': a step along the velocity's sign,
    clipped to the box): returns the iterate of highest loss among steps + 1 (x included)."""
    n = x.shape[0]
    pert = torch.zeros_like(x)
    velocity = torch.zeros_like(x)
    best_pert = torch.zeros_like(x)
    best_loss = torch.full((n,), -float("inf"), device=x.device)
    for i in range(steps + 1):
        pert.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(x + pert), y)
            improved = loss.detach() > best_loss
            best_loss[improved] = loss.detach()[improved]
            best_pert[improved] = pert.detach()[improved]
            if i == steps:
                break
            grad, = torch.autograd.grad(loss.mean(), pert)
        with torch.no_grad():
            l1 = grad.abs().view(n, -1).sum(dim=1).view(-1, 1, 1, 1)
            velocity = momentum * velocity + grad / (l1 + 1e-10)
            if norm == "linf":
                pert = torch.clamp(pert + step_size * velocity.sign(), -eps, eps)
            else:
                v_norm = velocity.view(n, -1).norm(dim=1).view(-1, 1, 1, 1)
                pert = pert + step_size * velocity / (v_norm + 1e-12)
                p_norm = pert.view(n, -1).norm(dim=1).view(-1, 1, 1, 1)
                pert = pert * torch.clamp(eps / (p_norm + 1e-12), max=1.0)
            pert = torch.clamp(x + pert, 0, 1) - x
    return (x + best_pert).detach()


class ReferenceRatio:
    """One RATIO step at a time, the plain way; `config` is a ratio_fast TrainConfig (mode 'ratio')."""

    def __init__(self, model, config, total_steps: int, device="cpu"):
        self.config = config
        self.total_steps = total_steps
        self.steps_done = 0
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval()
        self.ema_updates = 0
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         nesterov=True, weight_decay=config.weight_decay, foreach=False)

    def attack(self, x, y, z):
        """(x_adv, z_adv): the in-distribution attack, then the out-distribution one, in eval mode."""
        cfg, model = self.config, self.model
        model.eval()
        x_adv = argmin_pgd(model, x, y, cross_entropy_per_sample, cfg.eps_in, cfg.steps_in,
                           cfg.step_size_in, cfg.attack_momentum, cfg.norm)
        z_adv = argmin_pgd(model, z, None, kl_uniform_per_sample, cfg.eps_out, cfg.steps_out,
                           cfg.step_size_out, cfg.attack_momentum, cfg.norm)
        model.train()
        return x_adv, z_adv

    def step(self, x, y, z) -> torch.Tensor:
        cfg, model = self.config, self.model
        x, y, z = x.to(self.device), y.to(self.device), z.to(self.device)
        x_adv, z_adv = self.attack(x, y, z)
        logits = model(torch.cat([x_adv, z_adv]))
        n = x.shape[0]
        loss = 0.5 * F.cross_entropy(logits[:n], y) + 0.5 * cfg.lam * kl_uniform_per_sample(logits[n:]).mean()
        lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * min(self.steps_done, self.total_steps) / max(self.total_steps, 1)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._update_ema()
        self.steps_done += 1
        return loss.detach()

    @torch.no_grad()
    def _update_ema(self):
        decay = min(self.config.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        for mine, theirs in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
            if mine.is_floating_point():
                mine.mul_(decay).add_(theirs, alpha=1 - decay)
            else:
                mine.copy_(theirs)
        self.ema_updates += 1
