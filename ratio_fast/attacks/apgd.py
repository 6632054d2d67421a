"""APGD in L2 or L-infinity (Croce & Hein, ICML 2020), step for step AutoAttack's APGD, on the fused PGD step.

    result = apgd_run(model, x, y, eps=0.5, steps=100, objective="ce", count_misclassified=True)
    result.fooled      # AutoAttack's success: some iterate (the start included) was misclassified
    result.best        # the highest-loss iterate: what training, worst-case OOD, counterfactuals use
    x_adv = APGD(eps=0.5, steps=100)(model, x, y)                        # apgd_run(...).best
    z_adv = APGD(eps=1.0, steps=20, objective="kl_uniform")(model, z)    # RATIO's out-distribution
    fooled = APGDTargeted(eps=0.5, steps=100).run(model, x, y).fooled    # APGD-T, 9 targets in one batch
    x_adv = APGD(eps=8 / 255, steps=100, norm="linf")(model, x, y)      # L-infinity

The algorithm, per sample, is AutoAttack's (fra31/auto-attack, `autopgd_base.py`, norms L2 and
Linf); k counts steps, N = steps:
- x_0: a random point on the eps-sphere clipped to [0,1] (or the clean point, or a given start);
  in L-infinity AutoAttack's x + eps t / ||t||_inf, t uniform in [-1, 1]^D;
- z = P(x_k + eta s(g)), x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})), with
  a = 1 at k = 0, else 0.75; s(g) = g / ||g||_2 in L2, sign(g) in L-infinity; P projects onto the
  eps-ball (the box in L-infinity), then clips to [0,1]; eta starts at 2 eps;
- checkpoints (`checkpoints`): the first after w = max(floor(0.22 N), 1) steps, then after every w
  more, w shrinking by max(floor(0.03 N), 1) after each, down to max(floor(0.06 N), 1). There eta
  halves, and the iterate jumps back to the best point with its gradient, when
    1. at most rho = 0.75 of the steps since the last checkpoint raised the loss over the step
       before (the first step compares against 0: AutoAttack's loss history starts zeroed), or
    2. eta was not halved at the last checkpoint and the best loss has not improved since (so
       never at the first checkpoint);
  the momentum term after the jump is x_best - x_{k-1}, as in AutoAttack;
- results: the best iterate (highest loss, the start included) and, with labels, whether some
  iterate was misclassified and the last one that was (AutoAttack's `x_best_adv`).
The tests run this against the `pyautoattack` package in fp64 iterate by iterate.

The schedule is known before the loop, so the loop has a static structure: per-sample step
sizes are tensors halved with `torch.where`, restarts are `torch.where` selections, and nothing
in it synchronizes with the host (it can be replayed from a CUDA graph). Cost: `steps` gradients
and one final forward (AutoAttack also differentiates the last iterate, whose gradient is never
used). As in `pgd.py` (whose context it reuses), the model is put in eval mode and restored,
and only the input is differentiated: the backward computes no weight gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from .pgd import attacking, check_attack_settings, check_images
from .objectives import PerSampleLoss, resolve_objective, targeted_dlr
from ..models import eval_mode
from ..ops import pgd_step, sample_ball
from ..ops import check_norm, compute_dtype, per_sample, sample_layout
from ..validation import check_number

ALPHA = 0.75  # weight of the new step against the previous one (the paper's momentum)
RHO = 0.75  # condition 1: the fraction of steps that must raise the loss between checkpoints
GRAD_NORM_EPS = 1e-12  # AutoAttack steps along g / (||g||_2 + 1e-12)


def checkpoints(steps: int) -> list[int]:
    """The step counts after which APGD checks its progress (AutoAttack's integer schedule).

    The first window is max(floor(0.22 N), 1) steps; each next one max(floor(0.03 N), 1) shorter,
    but at least max(floor(0.06 N), 1). A check after the last step would change nothing, so
    the list stops before N. For 100 steps: [22, 41, 57, 70, 80, 87, 93, 99].
    """
    window, shrink, shortest = (max(int(p * steps), 1) for p in (0.22, 0.03, 0.06))
    marks, at = [], window
    while at < steps:
        marks.append(at)
        window = max(window - shrink, shortest)
        at += window
    return marks


class APGDResult(NamedTuple):
    """Per sample: the highest-loss iterate and its loss; with labels, AutoAttack's success and point.

    fooled: some iterate (the start included) was misclassified; adversarial: the last such
    iterate where fooled, else the best one. Both None when misclassification is not counted.
    """

    best: torch.Tensor
    best_loss: torch.Tensor
    fooled: torch.Tensor | None
    adversarial: torch.Tensor | None


def random_start_point(x: torch.Tensor, eps: float | torch.Tensor, generator: torch.Generator | None = None,
                       backend: str = "auto", norm: str = "l2") -> torch.Tensor:
    """APGD's random start, clipped to [0,1]: in L2 a uniform point of the eps-sphere around each x;
    in L-infinity AutoAttack's x + eps t / ||t||_inf, t uniform in [-1, 1]^D (a point of the box's surface)."""
    return sample_ball(x, eps, on_sphere=True, generator=generator, backend=backend, norm=norm)[0]


def apgd_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: float | torch.Tensor,
             steps: int, objective: str | PerSampleLoss = "ce", start: torch.Tensor | None = None,
             random_start: bool = True, count_misclassified: bool = False, backend: str = "auto",
             generator: torch.Generator | None = None, check_inputs: bool = True, norm: str = "l2",
             on_step: Callable[[], None] | None = None) -> APGDResult:
    """APGD maximizing `objective` within ||delta|| <= eps in `norm` ('l2' or 'linf'), x + delta in [0,1].

    eps: a float or per-sample (N,) tensor. objective: a name in losses.OBJECTIVES or a callable
    (logits, labels) -> per-sample loss. start: the first iterate (a point of the ball and the
    box), instead of a random one (`random_start`, drawn from `generator`) or x itself.
    count_misclassified: also track AutoAttack's success, argmax != y at some iterate.
    check_inputs: refuse x outside [0,1] (one host synchronization; pgd.py says when not to).
    on_step: called on the host after each step's launches (a progress line; it must not sync).
    Returned points are detached, in x's dtype and memory layout.
    """
    check_norm(norm)
    if check_inputs:
        check_images(x)
    objective = resolve_objective(objective)
    objective.check_labels(y)
    if count_misclassified and y is None:
        raise ValueError("counting misclassified iterates needs labels y")
    loss_fn = objective.loss
    x = x.detach()
    n = x.shape[0]
    eps = per_sample(eps, n, x)
    with attacking(model, input_grad_only=True):  # eval mode, weights frozen, grad enabled
        if start is None:
            start = random_start_point(x, eps, generator, backend, norm) if random_start else x
        acc = compute_dtype(x, start)
        x_k, delta = start.detach(), start.detach().to(acc) - x.to(acc)
        loss, grad, wrong = _evaluate(model, loss_fn, x_k, y, count_misclassified, with_grad=steps > 0)
        best_x, best_delta, best_loss, best_grad = x_k, delta, loss, grad
        fooled, adversarial = wrong, (x_k if count_misclassified else None)
        prev_delta = delta
        step = 2.0 * eps
        # Projection alone is the fused step with a zero gradient (and zero step).
        zero_grad, zero_step = (torch.zeros_like(grad), torch.zeros_like(eps)) if steps else (None, None)

        checks = set(checkpoints(steps))
        last_check = 0
        # AutoAttack's loss history: fp32 (whatever the model's dtype), starting at 0.
        prev_loss = torch.zeros_like(loss, dtype=torch.float32)
        increases = torch.zeros_like(eps)  # steps that raised the loss since the last checkpoint
        best_at_check = best_loss
        halved_at_check = torch.ones_like(eps, dtype=torch.bool)  # condition 2 waits for the 2nd checkpoint
        for k in range(steps):
            # AutoAttack's L2 direction is g / (||g|| + 1e-12); its L-infinity one, sign(g), is exact.
            step_k = step * _shortening(grad) if norm == "l2" else step
            _, delta_z, _ = pgd_step(x, delta, grad, eps, step_k, backend=backend, norm=norm)
            if k == 0:
                combined = delta_z
            else:
                combined = torch.lerp(delta, delta_z, ALPHA).add_(delta - prev_delta, alpha=1 - ALPHA)
            x_k, delta_next, _ = pgd_step(x, combined, zero_grad, eps, zero_step, backend=backend, norm=norm)
            prev_delta, delta = delta, delta_next

            last = k + 1 == steps  # the final iterate needs its loss, not its gradient
            loss, new_grad, wrong = _evaluate(model, loss_fn, x_k, y, count_misclassified, with_grad=not last)
            if on_step is not None:
                on_step()
            if count_misclassified:
                fooled = fooled | wrong
                adversarial = _select(wrong, x_k, adversarial)
            increases += (loss.float() > prev_loss).to(increases.dtype)
            prev_loss = loss.float()
            better = loss > best_loss  # NaN never counts as better
            best_x, best_delta = _select(better, x_k, best_x), _select(better, delta, best_delta)
            best_loss = torch.where(better, loss, best_loss)
            if last:
                break
            grad = new_grad
            best_grad = _select(better, grad, best_grad)

            if k + 1 in checks:
                oscillating = increases <= RHO * (k + 1 - last_check)
                stalled = ~halved_at_check & (best_loss <= best_at_check)
                halve = oscillating | stalled
                step = torch.where(halve, 0.5 * step, step)
                delta = _select(halve, best_delta, delta)  # prev_delta stays: AutoAttack keeps the momentum
                grad = _select(halve, best_grad, grad)
                increases = torch.zeros_like(increases)
                best_at_check, halved_at_check, last_check = best_loss, halve, k + 1
    if count_misclassified:
        adversarial = _select(fooled, adversarial, best_x).detach()
    return APGDResult(best_x.detach(), best_loss, fooled, adversarial)


def _evaluate(model, loss_fn, x_k, y, count_misclassified: bool, with_grad: bool):
    """(per-sample loss, its gradient w.r.t. the input or None, argmax != y or None) at x_k."""
    if with_grad:
        x_in = x_k.detach().requires_grad_(True)
        logits = model(x_in)
        loss = loss_fn(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), x_in)
    else:
        with torch.no_grad():
            logits = model(x_k)
            loss = loss_fn(logits, y)
        grad = None
    wrong = (logits.detach().argmax(1) != y) if count_misclassified else None
    return loss.detach(), grad, wrong


def _shortening(grad: torch.Tensor) -> torch.Tensor:
    """||g|| / (||g|| + 1e-12) per sample: AutoAttack steps along g / (||g|| + 1e-12), so a gradient
    of norm ~1e-12 (a saturated DLR) takes a shorter step; the fused step normalizes exactly."""
    norm = grad.flatten(1).norm(dim=1).to(torch.float32 if grad.dtype != torch.float64 else grad.dtype)
    return norm / (norm + GRAD_NORM_EPS)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample, a where mask else b (mask is (N,), a and b are (N, ...))."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


@dataclass
class APGD:
    """An APGD attack in `norm` ('l2' or 'linf') with fixed settings, called as `attack(model, x, y)` like `PGD`.

    objective: a name in losses.OBJECTIVES ("ce" is APGD-CE, "dlr" APGD-DLR) or any callable
    (logits, labels) -> per-sample loss. Calling it returns the highest-loss iterate; `run`
    returns the whole APGDResult, with AutoAttack's success where the labels are the true
    classes ("ce", "dlr").
    """

    eps: float | torch.Tensor
    steps: int
    objective: str | PerSampleLoss = "ce"
    random_start: bool = True
    backend: str = "auto"
    check_inputs: bool = True  # refuse x outside [0,1], one host sync per call (pgd.py)
    norm: str = "l2"

    def __post_init__(self):
        check_attack_settings(self.eps, self.steps, self.objective)
        check_norm(self.norm)

    def run(self, model, x, y=None, generator=None, start=None) -> APGDResult:
        counts = y is not None and resolve_objective(self.objective).labels_are_true_classes
        return self._run(model, x, y, generator, start, counts)

    def __call__(self, model, x, y=None, generator=None) -> torch.Tensor:
        return self._run(model, x, y, generator, None, False).best  # training needs no success bookkeeping

    def _run(self, model, x, y, generator, start, count_misclassified: bool) -> APGDResult:
        return apgd_run(model, x, y, eps=self.eps, steps=self.steps, objective=self.objective, start=start,
                        random_start=self.random_start, count_misclassified=count_misclassified,
                        backend=self.backend, generator=generator, check_inputs=self.check_inputs, norm=self.norm)


# attack_rows(x, y, targets, start, eps) -> APGDResult: the targeted runs of a set of (image, target)
# rows; APGDTargeted runs them eagerly unless given another (evaluation/evaluate.py replays a CUDA graph).
RowAttack = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], APGDResult]


@dataclass
class APGDTargeted:
    """APGD-T as in AutoAttack: targeted DLR against each of the `targets` runner-up classes.

    The k-th run of an image targets the class with its (k+1)-th highest clean logit, as in
    AutoAttack. All runs go in one batch of (image, target) rows with per-row targets and
    random starts, instead of AutoAttack's one target after the other on the images not yet
    fooled: the same attacks, as few launches as possible. Per image, `fooled` if some iterate
    of some run was misclassified; `adversarial` is then the first such run's point, else the
    best iterate of the run that came closest (highest targeted DLR). Cost: `targets` x
    `steps` gradients per image.
    """

    eps: float | torch.Tensor
    steps: int
    targets: int = 9
    random_start: bool = True
    backend: str = "auto"
    check_inputs: bool = True  # refuse x outside [0,1], one host sync per call (pgd.py)
    norm: str = "l2"

    def __post_init__(self):
        check_number("targets", self.targets, at_least=1, integer=True)
        check_attack_settings(self.eps, self.steps)
        check_norm(self.norm)

    def rows(self, model, x, y, generator=None):
        """The (image, target) rows, target-major: (x, y, targets, start, eps), each (T*N, ...)."""
        with eval_mode(model), torch.no_grad():
            logits = model(x)
        if logits.shape[1] < 4:
            raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {logits.shape[1]}")
        count = min(self.targets, logits.shape[1] - 1)
        targets = logits.argsort(dim=1, descending=True)[:, 1:count + 1]  # (N, T), the runner-ups in order
        repeat = (count, *([1] * (x.dim() - 1)))
        x_rows = x.detach().repeat(repeat).contiguous(memory_format=sample_layout(x))
        eps_rows = per_sample(self.eps, x.shape[0], x).repeat(count)
        start = (random_start_point(x_rows, eps_rows, generator, self.backend, self.norm) if self.random_start
                 else x_rows)
        return x_rows, y.repeat(count), targets.t().reshape(-1), start, eps_rows

    def attack_rows(self, model) -> RowAttack:
        """The eager targeted APGD of a set of rows."""
        def attack(x, y, targets, start, eps):
            return apgd_run(model, x, y, eps=eps, steps=self.steps,
                            objective=lambda logits, labels: targeted_dlr(logits, labels, targets),
                            start=start, count_misclassified=True, backend=self.backend, check_inputs=False,
                            norm=self.norm)
        return attack

    def run(self, model, x, y, generator=None, attack_rows: RowAttack | None = None) -> APGDResult:
        if self.check_inputs:
            check_images(x)
        rows = self.rows(model, x, y, generator)
        r = (attack_rows or self.attack_rows(model))(*rows)
        n = x.shape[0]
        count = rows[0].shape[0] // max(n, 1)
        per_target = lambda t: t.view(count, n, *t.shape[1:])  # noqa: E731
        fooled = per_target(r.fooled)
        any_fooled = fooled.any(0)
        closest = per_target(r.best_loss).argmax(0)
        pick = torch.where(any_fooled, fooled.to(torch.uint8).argmax(0), closest)  # argmax: the first True
        samples = torch.arange(n, device=x.device)
        best = per_target(r.best)[closest, samples]
        adversarial = per_target(r.adversarial)[pick, samples]
        layout = sample_layout(x)
        return APGDResult(best.contiguous(memory_format=layout), per_target(r.best_loss)[closest, samples],
                          any_fooled, adversarial.contiguous(memory_format=layout))

    def __call__(self, model, x, y, generator=None) -> torch.Tensor:
        return self.run(model, x, y, generator).adversarial
