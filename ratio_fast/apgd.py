"""APGD in L2 (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), built on the fused PGD step.

    attack = APGD(eps=0.5, steps=100)                 # APGD-CE
    x_adv = attack(model, x, y)
    z_adv = APGD(eps=1.0, steps=20, objective="kl_uniform")(model, z)   # RATIO's out-distribution
    x_adv = APGDTargeted(eps=0.5, steps=100)(model, x, y)                # APGD-T (targeted DLR)

The algorithm, per sample (k counts steps, x_0 the start):
- x_0: a random point on the eps-sphere (clipped to [0,1]), or the clean point;
- z = P(x_k + eta * g / ||g||_2), where P projects onto the eps-ball, then clips to [0,1];
  x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})), alpha = 0.75 (1 at k = 0);
- eta starts at 2 eps; at the checkpoints w_j = ceil(p_j * steps), p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), eta halves and the iterate restarts from the
  best point (with the gradient there) when either
    1. the loss went up in fewer than rho = 0.75 of the steps since the last checkpoint, or
    2. eta was not halved at the last checkpoint and the best loss has not improved since;
- the result is the best iterate (highest loss), the start included.

The schedule is known before the loop, so the loop has a static structure: per-sample step
sizes are tensors halved with `torch.where`, restarts are `torch.where` selections, and nothing
in it synchronizes with the host. The budget matches `L2PGD(steps=...)` with keep_best: `steps`
gradient evaluations and one final forward. As in `attacks.py` (whose context it reuses), the
model is put in eval mode and restored, and only the input is differentiated: the weights are
frozen meanwhile, so the backward computes no weight gradient.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attacks import OBJECTIVES, Objective, attacking
from .losses import cross_entropy
from .ops import pgd_step, sample_ball
from .ops._common import per_sample

ALPHA = 0.75  # weight of the new step against the previous one (the paper's momentum)
RHO = 0.75  # condition 1: the fraction of steps that must raise the loss between checkpoints
EPS_DIV = 1e-12  # keeps the DLR denominators away from 0


def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss, -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); > 0 iff misclassified."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    z = logits.float()
    top = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    is_top = z.argmax(1) == labels
    best_other = torch.where(is_top, top[:, 1], top[:, 0])
    return -(z_y - best_other) / (top[:, 0] - top[:, 2] + EPS_DIV)


def targeted_dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (AutoAttack's APGD-T), -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    z = logits.float()
    top = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    z_t = z.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + EPS_DIV)


def max_log_confidence(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """max_k log p_k: the worst-case out-distribution attack makes the model confident. Labels ignored."""
    return F.log_softmax(logits.float(), dim=1).amax(dim=1)


def target_log_probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p_target (targeted CE, negated): counterfactuals push the target class's probability up."""
    return -cross_entropy(logits, targets)


# name -> per-sample loss to maximize, objective(logits, labels). "target_ce" reads the labels
# as the target classes; the targeted DLR needs both the true and the target class, so
# APGDTargeted builds it per target (see there).
APGD_OBJECTIVES: dict[str, Objective] = {
    **OBJECTIVES,
    "dlr": dlr,
    "max_conf": max_log_confidence,
    "target_ce": target_log_probability,
}
_NEEDS_LABELS = {"ce", "dlr", "target_ce"}


def resolve_apgd_objective(objective: str | Objective) -> Objective:
    if callable(objective):
        return objective
    if objective not in APGD_OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(APGD_OBJECTIVES)} or a callable, got {objective!r}")
    return APGD_OBJECTIVES[objective]


def checkpoints(steps: int) -> list[int]:
    """The steps after which APGD checks its progress: ceil(p_j * steps) for p_j < 1, no duplicates.

    For 100 steps: [22, 41, 57, 70, 80, 87, 93, 99], the same as AutoAttack's integer schedule.
    """
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round() first so 0.41 * 100 = 41.000000000000007 does not become 42
    marks = {math.ceil(round(pj * steps, 6)) for pj in p[1:]}
    return sorted(w for w in marks if 0 < w < steps)


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Run the block with the model in eval mode (BatchNorm running stats) and restore its mode.

    For the no-grad forwards around the attacks (target choice, checks); attacks themselves
    run under `attacks.attacking`.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def apgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float | torch.Tensor,
    steps: int,
    objective: str | Objective = "ce",
    random_start: bool = True,
    backend: str = "auto",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L2 APGD maximizing `objective` within ||delta||_2 <= eps, x + delta in [0,1]; returns the best iterate.

    eps: a float or per-sample (N,) tensor. objective: a name in APGD_OBJECTIVES or a callable
    (logits, labels) -> per-sample loss. Returns x_adv, detached, in x's dtype and memory layout.
    """
    loss_fn = resolve_apgd_objective(objective)
    if y is None and isinstance(objective, str) and objective in _NEEDS_LABELS:
        raise ValueError(f"the {objective!r} objective needs labels y")
    x = x.detach()
    n = x.shape[0]
    eps = per_sample(eps, n, x)
    with attacking(model, input_grad_only=True):  # eval mode, weights frozen, grad enabled
        if random_start:
            x_k, delta = sample_ball(x, eps, on_sphere=True, generator=generator, backend=backend)
        else:
            x_k, delta = x, torch.zeros_like(x, dtype=torch.float32)
        if steps == 0:
            return x_k.detach()
        loss, grad = _loss_and_grad(model, loss_fn, x_k, y)
        best_x, best_delta, best_loss, best_grad = x_k, delta, loss, grad
        prev_delta = delta
        step = 2.0 * eps
        # Projection alone is the fused step with a zero gradient (and zero step).
        zero_grad, zero_step = torch.zeros_like(grad), torch.zeros_like(eps)

        checks = set(checkpoints(steps))
        last_check = 0
        increases = torch.zeros_like(eps)  # steps that raised the loss since the last checkpoint
        best_at_check = best_loss
        halved_at_check = torch.zeros_like(eps, dtype=torch.bool)
        for k in range(steps):
            _, delta_z, _ = pgd_step(x, delta, grad, eps, step, backend=backend)
            if k == 0:
                combined = delta_z
            else:
                combined = torch.lerp(delta, delta_z, ALPHA).add_(delta - prev_delta, alpha=1 - ALPHA)
            x_k, delta_next, _ = pgd_step(x, combined, zero_grad, eps, zero_step, backend=backend)
            prev_delta, delta = delta, delta_next

            last = k + 1 == steps
            if last:  # the final iterate needs its loss, not its gradient
                with torch.no_grad():
                    new_loss = loss_fn(model(x_k), y)
            else:
                new_loss, grad = _loss_and_grad(model, loss_fn, x_k, y)
            increases += (new_loss > loss).float()
            loss = new_loss
            better = new_loss > best_loss  # NaN never counts as better
            best_x, best_delta = _select(better, x_k, best_x), _select(better, delta, best_delta)
            best_loss = torch.where(better, new_loss, best_loss)
            if last:
                break
            best_grad = _select(better, grad, best_grad)

            if k + 1 in checks:
                oscillating = increases < RHO * (k + 1 - last_check)
                stalled = ~halved_at_check & (best_loss <= best_at_check)
                halve = oscillating | stalled
                step = torch.where(halve, 0.5 * step, step)
                # Restart from the best point; the step after a restart takes no momentum
                # (the jump back is not a direction of progress).
                delta, prev_delta = _select(halve, best_delta, delta), _select(halve, best_delta, prev_delta)
                grad = _select(halve, best_grad, grad)
                loss = torch.where(halve, best_loss, loss)
                increases = torch.zeros_like(increases)
                best_at_check, halved_at_check, last_check = best_loss, halve, k + 1
        return best_x.detach()


def _loss_and_grad(model, loss_fn, x_k, y):
    """Per-sample loss at x_k and its gradient with respect to the input only."""
    x_in = x_k.detach().requires_grad_(True)
    loss = loss_fn(model(x_in), y)
    (grad,) = torch.autograd.grad(loss.sum(), x_in)
    return loss.detach(), grad


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample, a where mask else b (mask is (N,), a and b are (N, ...))."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


@dataclass
class APGD:
    """An L2 APGD attack with fixed settings, called as `attack(model, x, y)` like `L2PGD`.

    Objectives: "ce" (APGD-CE), "dlr" (APGD-DLR), "kl_uniform" (training, out-distribution),
    "max_conf" (worst-case out-distribution evaluation), "target_ce" (y holds the target class:
    counterfactuals), or any callable (logits, labels) -> per-sample loss.
    """

    eps: float | torch.Tensor
    steps: int
    objective: str | Objective = "ce"
    random_start: bool = True
    backend: str = "auto"

    def __post_init__(self):
        if isinstance(self.eps, (int, float)) and self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        resolve_apgd_objective(self.objective)

    def __call__(self, model, x, y=None, generator=None) -> torch.Tensor:
        return apgd(model, x, y, eps=self.eps, steps=self.steps, objective=self.objective,
                    random_start=self.random_start, backend=self.backend, generator=generator)


@dataclass
class APGDTargeted:
    """APGD-T as in AutoAttack: targeted DLR against each of the `targets` runner-up classes.

    The k-th run targets the class with the (k+1)-th highest clean logit. Per sample, the result
    is the first run's point that is misclassified, else the last run's point, so a sample
    counts as robust only if it survives every target. Cost: `targets` x `steps` gradients.
    """

    eps: float | torch.Tensor
    steps: int
    targets: int = 9
    random_start: bool = True
    backend: str = "auto"

    def __post_init__(self):
        if self.targets < 1:
            raise ValueError(f"targets must be >= 1, got {self.targets}")
        APGD(self.eps, self.steps)  # the same argument checks

    def __call__(self, model, x, y, generator=None) -> torch.Tensor:
        with eval_mode(model):
            with torch.no_grad():
                logits = model(x)
            if logits.shape[1] < 4:
                raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {logits.shape[1]}")
            ranked = logits.argsort(dim=1, descending=True)
            result, fooled = x.detach(), torch.zeros_like(y, dtype=torch.bool)
            for rank in range(1, min(self.targets, logits.shape[1] - 1) + 1):
                target = ranked[:, rank]
                x_adv = apgd(model, x, y, eps=self.eps, steps=self.steps,
                             objective=lambda z, labels, t=target: targeted_dlr(z, labels, t),
                             random_start=self.random_start, backend=self.backend, generator=generator)
                with torch.no_grad():
                    wrong = model(x_adv).argmax(1) != y
                result = _select(fooled, result, x_adv)
                fooled = fooled | wrong
            return result
