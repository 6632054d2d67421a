"""L2 PGD attacks built on the fused ops, usable in anyone's training loop.

    attack = L2PGD(eps=0.5, steps=10, step_size=0.1)
    x_adv = attack(model, x, y)

Inputs are images in [0,1]; the model returns logits. The attack puts the model in eval mode
(BatchNorm uses running statistics, samples stay independent) and restores its mode after;
it differentiates with respect to the input only, so no weight gradient is computed and no
parameter's `.grad` is touched. The loop has no host synchronization: the best-iterate
bookkeeping is done with `torch.where`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .losses import cross_entropy, kl_to_uniform
from .ops import pgd_step, sample_ball
from .ops._common import per_sample

Objective = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

# name -> per-sample loss to maximize, called as objective(logits, labels)
OBJECTIVES: dict[str, Objective] = {
    "ce": cross_entropy,  # in-distribution: push the true class down
    "kl_uniform": kl_to_uniform,  # out-distribution: make the model confident (no labels needed)
}


def resolve_objective(objective: str | Objective) -> Objective:
    if callable(objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)} or a callable, got {objective!r}")
    return OBJECTIVES[objective]


def l2_pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float | torch.Tensor,
    steps: int,
    step_size: float | torch.Tensor,
    momentum: float = 0.0,
    random_start: bool = False,
    keep_best: bool = False,
    objective: str | Objective = "ce",
    backend: str = "auto",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected L2 PGD maximizing `objective` within ||delta||_2 <= eps, x + delta in [0,1].

    eps and step_size are floats or per-sample (N,) tensors. momentum > 0 accumulates the
    L1-normalized gradient (the authors' ArgminPGD); keep_best returns, per sample, the iterate
    with the highest loss among all of them (the starting point included); otherwise the last.
    Returns x_adv, detached, in x's dtype and memory layout.
    """
    loss_fn = resolve_objective(objective)
    if loss_fn is cross_entropy and y is None:
        raise ValueError("the 'ce' objective needs labels y")
    x = x.detach()
    # Per-sample tensors once, not a fill kernel in every step.
    eps, step_size = per_sample(eps, x.shape[0], x), per_sample(step_size, x.shape[0], x)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if random_start:
                x_adv, delta = sample_ball(x, eps, generator=generator, backend=backend)
            else:
                x_adv, delta = x, torch.zeros_like(x, dtype=torch.float32)
            velocity = torch.zeros_like(delta) if momentum else None
            best_x, best_loss = x_adv, None
            for _ in range(steps):
                x_in = x_adv.detach().requires_grad_(True)
                loss = loss_fn(model(x_in), y)
                (grad,) = torch.autograd.grad(loss.sum(), x_in)
                if keep_best:
                    best_x, best_loss = _keep_better(best_x, best_loss, x_in.detach(), loss.detach())
                x_adv, delta, velocity = pgd_step(x, delta, grad, eps, step_size, velocity, momentum, backend=backend)
        if not keep_best:
            return x_adv.detach()
        with torch.no_grad():  # the last iterate still needs its loss
            loss = loss_fn(model(x_adv), y)
        return _keep_better(best_x, best_loss, x_adv, loss)[0].detach()
    finally:
        model.train(was_training)


def _keep_better(best_x, best_loss, x_new, loss_new):
    """Per sample, the iterate with the higher loss (ties and NaN keep the earlier one)."""
    if best_loss is None:
        return x_new, loss_new
    better = loss_new > best_loss
    mask = better.view(-1, *([1] * (x_new.dim() - 1)))
    return torch.where(mask, x_new, best_x), torch.where(better, loss_new, best_loss)


@dataclass
class L2PGD:
    """An L2 PGD attack with fixed settings; call it as `attack(model, x, y)`.

    The defaults are textbook PGD-L2 (no momentum, no random start, last iterate). The authors'
    RATIO attack (ArgminPGD) is `L2PGD(eps, steps, 0.1, momentum=0.9, keep_best=True)`.
    """

    eps: float | torch.Tensor
    steps: int
    step_size: float | torch.Tensor
    momentum: float = 0.0
    random_start: bool = False
    keep_best: bool = False
    objective: str | Objective = "ce"
    backend: str = "auto"

    def __post_init__(self):
        if isinstance(self.eps, (int, float)) and self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        resolve_objective(self.objective)

    def __call__(self, model, x, y=None, generator=None) -> torch.Tensor:
        return l2_pgd(
            model, x, y,
            eps=self.eps, steps=self.steps, step_size=self.step_size, momentum=self.momentum,
            random_start=self.random_start, keep_best=self.keep_best, objective=self.objective,
            backend=self.backend, generator=generator,
        )
