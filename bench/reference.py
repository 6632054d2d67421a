"""The plain reference: RATIO (and each other --mode) as the authors' code runs it, for timing
the engine against.

Plain PyTorch throughout, as in M4xim4l/InNOutRobustness: fp32, eager, NCHW, the in- and
out-distribution attacks one after the other, the ArgminPGD step written out in torch ops
(momentum on the L1-normalized gradient, L2-normalized step, projection, box clamp, best
iterate kept with boolean indexing), one train-mode forward on the joined batch, SGD-Nesterov
stepping one tensor at a time, and an EMA updated tensor by tensor. Nothing from
ratio_fast's ops, attacks, losses or trainer is used, so it is also an independent
implementation to check the engine against (tests/test_reference_agreement.py).

    reference = ReferenceRatio(model, TrainConfig(...), total_steps, device="cuda")
    loss = reference.step(x, y, z)

Every training type is written out below on its own (which attack, which loss), from the
authors' utils/train_types/ and TRADES' trades.py, not read from ratio_fast's table.
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


def trades_kl_per_sample(logits, clean_probabilities):
    """KL(p(x) || softmax(logits)) per sample, as TRADES' KLDivLoss summed over classes."""
    return F.kl_div(F.log_softmax(logits, dim=1), clean_probabilities, reduction="none").sum(dim=1)


def trades_start(x):
    """TRADES' start: x + 0.001 * N(0, I), in the box."""
    return torch.clamp(x + 0.001 * torch.randn_like(x), 0, 1) - x


def argmin_pgd(model, x, y, loss_fn, eps, steps, step_size, momentum, start=None, norm="l2"):
    """The authors' ArgminPGD in L2 or L-infinity (`norm` 'linf': a step along the velocity's sign,
    clipped to the box): returns the iterate of highest loss among steps + 1 (the start, x itself
    unless a start perturbation is given, included)."""
    n = x.shape[0]
    pert = torch.zeros_like(x) if start is None else start
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
    """One training step at a time, the plain way; `config` is a ratio_fast TrainConfig (any mode)."""

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
        """(x_adv, z_adv), None where the mode has no such attack: the in-distribution attack,
        then the out-distribution one, in eval mode."""
        cfg, model, mode = self.config, self.model, self.config.mode
        model.eval()
        x_adv = z_adv = None
        if mode in ("at", "ratio"):
            x_adv = argmin_pgd(model, x, y, cross_entropy_per_sample, cfg.eps_in, cfg.steps_in,
                               cfg.step_size_in, cfg.attack_momentum, norm=cfg.norm)
        if mode in ("trades", "trades-ceda", "trades-acet"):
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            x_adv = argmin_pgd(model, x, p_clean, trades_kl_per_sample, cfg.eps_in, cfg.steps_in,
                               cfg.step_size_in, cfg.attack_momentum, start=trades_start(x), norm=cfg.norm)
        if mode in ("acet", "ratio", "trades-acet"):
            z_adv = argmin_pgd(model, z, None, kl_uniform_per_sample, cfg.eps_out, cfg.steps_out,
                               cfg.step_size_out, cfg.attack_momentum, norm=cfg.norm)
        if mode == "trades-ceda":
            with torch.no_grad():
                p_clean_z = F.softmax(model(z), dim=1)
            z_adv = argmin_pgd(model, z, p_clean_z, trades_kl_per_sample, cfg.eps_out, cfg.steps_out,
                               cfg.step_size_out, cfg.attack_momentum, start=trades_start(z), norm=cfg.norm)
        model.train()
        return x_adv, z_adv

    def loss(self, x, y, x_adv, z, z_adv):
        """The mode's loss in one train-mode forward of the images it needs, in the order x, x_adv, z, z_adv."""
        cfg, mode = self.config, self.config.mode
        parts = {"x": x, "x_adv": x_adv, "z": z, "z_adv": z_adv}
        needed = {"plain": "x", "ceda": "x z", "acet": "x z_adv", "at": "x_adv", "trades": "x x_adv",
                  "ratio": "x x_adv z_adv" if cfg.train_clean else "x_adv z_adv", "trades-ceda": "x x_adv z z_adv",
                  "trades-acet": "x x_adv z_adv"}[mode].split()
        logits = dict(zip(needed, self.model(torch.cat([parts[k] for k in needed])).split(x.shape[0])))

        def trades(clean, adv, beta):  # TRADES: CE on the clean images + beta KL(p(x) || p(x_adv)), batchmean
            return beta * trades_kl_per_sample(logits[adv], F.softmax(logits[clean], dim=1)).mean()

        ce = F.cross_entropy
        if mode == "plain":
            return ce(logits["x"], y)
        if mode == "ceda":
            return ce(logits["x"], y) + cfg.lam * kl_uniform_per_sample(logits["z"]).mean()
        if mode == "acet":
            return ce(logits["x"], y) + cfg.lam * kl_uniform_per_sample(logits["z_adv"]).mean()
        if mode == "at":
            return ce(logits["x_adv"], y)
        if mode == "trades":
            return ce(logits["x"], y) + trades("x", "x_adv", cfg.trades_beta)
        if mode == "ratio":
            in_part = ce(logits["x_adv"], y) + (ce(logits["x"], y) if cfg.train_clean else 0)
            return 0.5 * in_part + 0.5 * cfg.lam * kl_uniform_per_sample(logits["z_adv"]).mean()
        in_part = ce(logits["x"], y) + trades("x", "x_adv", cfg.trades_beta)
        if mode == "trades-acet":
            return 0.5 * in_part + 0.5 * cfg.lam * kl_uniform_per_sample(logits["z_adv"]).mean()
        out_part = kl_uniform_per_sample(logits["z"]).mean() + trades("z", "z_adv", cfg.trades_beta_out)
        return 0.5 * in_part + 0.5 * cfg.lam * out_part  # trades-ceda

    def step(self, x, y, z) -> torch.Tensor:
        cfg, model = self.config, self.model
        x, y, z = x.to(self.device), y.to(self.device), z.to(self.device)
        x_adv, z_adv = self.attack(x, y, z)
        loss = self.loss(x, y, x_adv, z, z_adv)
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
