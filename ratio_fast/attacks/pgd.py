"""PGD attacks in L2 or L-infinity built on the fused ops, usable in anyone's training loop.

    attack = L2PGD(eps=0.5, steps=10, step_size=0.1)
    attack = LinfPGD()        # Madry et al.: eps 8/255, step 2/255, 10 steps, uniform random start
    attack = PGD(eps, steps, step_size, norm="linf")   # either norm by name (choices.NORMS)
    x_adv = attack(model, x, y)

Inputs are images in [0,1]; the model returns logits. The public entry points (`PGD`, `L2PGD`,
`LinfPGD`, `pgd`, `l2_pgd`, `joint_pgd`, and apgd.py's `APGD`, `APGDTargeted`, `apgd_run`) refuse other inputs
(0..255 pixels, normalized tensors, NaN) with a UserError, at the cost of one host
synchronization per call (`check_images`). Where a synchronization is not allowed (a CUDA graph
being captured, the trainer's step, evaluation's graphed attack calls) they are built or called
with `check_inputs=False`: those inputs come from ratio-fast's loaders, in [0,1] by construction.
The attack puts the model in eval mode
(BatchNorm uses running statistics, samples stay independent) and restores its mode after;
it differentiates with respect to the input only: the weights are marked as not requiring
gradients for the duration, so autograd (and a torch.compile'd model's backward) computes no
weight gradient and no parameter's `.grad` is touched. The loop has no host synchronization:
the best-iterate bookkeeping is done with `torch.where`.

`joint_pgd` runs RATIO's two attacks as one batch cat([x, z]) with per-sample eps, step
size and objective: one launch per layer serves both distributions.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..models import eval_mode
from ..ops import check_norm, per_sample, pgd_step, sample_ball
from ..validation import MOMENTUM_RANGE, check_number
from .objectives import PerSampleLoss, resolve_objective


@dataclass
class _Iterates:
    """A PGD run in progress, one row per sample: clean point, radius, step, iterate, momentum, best."""

    x: torch.Tensor
    eps: torch.Tensor
    step_size: torch.Tensor
    x_adv: torch.Tensor
    delta: torch.Tensor
    velocity: torch.Tensor | None
    best_x: torch.Tensor | None = None
    best_loss: torch.Tensor | None = None

    def rows(self, index: slice) -> "_Iterates":
        """The same run restricted to the samples in `index` (views, no copies)."""
        return _Iterates(*(None if t is None else t[index] for t in (
            self.x, self.eps, self.step_size, self.x_adv, self.delta, self.velocity, self.best_x, self.best_loss)))


@contextmanager
def attacking(model: torch.nn.Module, input_grad_only: bool):
    """Eval mode and gradients enabled; with input_grad_only, the weights stop requiring grad."""
    frozen = [p for p in model.parameters() if p.requires_grad] if input_grad_only else []
    with eval_mode(model), torch.enable_grad():
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)


def check_images(x: torch.Tensor, name: str = "x") -> None:
    """UserError unless every value of x is in [0, 1] (NaN is not): one host synchronization."""
    if x.numel() == 0:
        return
    low, high = torch.stack([x.detach().min(), x.detach().max()]).float().tolist()
    if not (0.0 <= low and high <= 1.0):
        raise UserError(f"{name} must be images with values in [0, 1] (the models normalize inside), got values "
                        f"from {low:g} to {high:g}")


def check_attack_settings(eps, steps, objective: str | PerSampleLoss | None = None, step_size=None) -> None:
    """What every attack object checks when it is built, with one message format: eps (and a
    step size) a finite number >= 0, steps an integer >= 0, the objective a registered name or
    a callable. A per-sample tensor eps or step size is the caller's to check: reading a CUDA
    tensor here would sync."""
    for name, value in (("eps", eps), ("step_size", step_size)):
        if value is not None and not isinstance(value, torch.Tensor):
            check_number(name, value, at_least=0)
    check_number("steps", steps, at_least=0, integer=True)
    if objective is not None:
        resolve_objective(objective)


def _start(x, eps, step_size, momentum, random_start, generator, backend, norm, start_noise=None) -> _Iterates:
    """The first iterate: a random point of the ball in `norm` (random_start), x plus Gaussian noise
    of per-sample deviation `start_noise` (an (N,) tensor; TRADES' start), or x itself."""
    x = x.detach()
    # Per-sample tensors once, not a fill kernel in every step.
    eps, step_size = per_sample(eps, x.shape[0], x), per_sample(step_size, x.shape[0], x)
    if random_start:
        x_adv, delta = sample_ball(x, eps, generator=generator, backend=backend, norm=norm)
    elif start_noise is not None:
        noise = torch.empty_like(x, dtype=torch.float32).normal_(generator=generator)
        x_adv = (x + start_noise.view(-1, *([1] * (x.dim() - 1))) * noise).clamp(0, 1).to(x.dtype)
        delta = (x_adv - x).to(torch.float32)
    else:
        x_adv, delta = x, torch.zeros_like(x, dtype=torch.float32)
    velocity = torch.zeros_like(delta) if momentum else None
    return _Iterates(x, eps, step_size, x_adv, delta, velocity)


def _iterate(model, it: _Iterates, y, loss_fn, steps, momentum, keep_best, backend, input_grad_only,
             norm) -> _Iterates:
    """`steps` PGD steps: forward, input gradient, best-iterate bookkeeping, fused projected step."""
    # With input_grad_only the weights are frozen; otherwise their gradients are requested too
    # (and dropped), which is what a plain loss.backward() would cost.
    weights = [] if input_grad_only else [p for p in model.parameters() if p.requires_grad]
    for _ in range(steps):
        x_in = it.x_adv.detach().requires_grad_(True)
        loss = loss_fn(model(x_in), y)
        grad = torch.autograd.grad(loss.sum(), [x_in, *weights])[0]
        if keep_best:
            it.best_x, it.best_loss = _keep_better(it.best_x, it.best_loss, x_in.detach(), loss.detach())
        it.x_adv, it.delta, it.velocity = pgd_step(it.x, it.delta, grad, it.eps, it.step_size, it.velocity,
                                                   momentum, backend=backend, norm=norm)
    return it


def _result(model, it: _Iterates, y, loss_fn, keep_best) -> torch.Tensor:
    if not keep_best:
        return it.x_adv.detach()
    with torch.no_grad():  # the last iterate still needs its loss
        loss = loss_fn(model(it.x_adv), y)
    return _keep_better(it.best_x, it.best_loss, it.x_adv, loss)[0].detach()


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float | torch.Tensor,
    steps: int,
    step_size: float | torch.Tensor,
    norm: str = "l2",
    momentum: float = 0.0,
    random_start: bool = False,
    start_noise: float = 0.0,
    keep_best: bool = False,
    objective: str | PerSampleLoss = "ce",
    backend: str = "auto",
    generator: torch.Generator | None = None,
    input_grad_only: bool = True,
    check_inputs: bool = True,
) -> torch.Tensor:
    """Projected PGD maximizing `objective` within ||delta|| <= eps in `norm`, x + delta in [0,1].

    norm: 'l2' (steps along the normalized gradient, the L2 ball) or 'linf' (steps along its sign,
    the box |delta_j| <= eps; random_start is then uniform in the box, as Madry et al.'s).
    objective: a name in losses.OBJECTIVES or a callable (logits, labels) -> per-sample loss.

    eps and step_size are floats or per-sample (N,) tensors. momentum > 0 accumulates the
    L1-normalized gradient (the authors' ArgminPGD, in either norm); start_noise > 0 (without
    random_start) starts at x + start_noise * N(0, I) in the box, for objectives flat at x (TRADES');
    keep_best returns, per sample, the iterate
    with the highest loss among all of them (the starting point included); otherwise the last.
    input_grad_only=False also computes (and discards) the weight gradients in every step: the
    cost of a plain backward, there only to measure what skipping them saves. check_inputs: refuse
    x outside [0,1] (one host synchronization; see the module).
    Returns x_adv, detached, in x's dtype and memory layout.
    """
    check_norm(norm)
    if check_inputs:
        check_images(x)
    objective = resolve_objective(objective)
    objective.check_labels(y)
    loss_fn = objective.loss
    with attacking(model, input_grad_only):
        noise = per_sample(start_noise, x.shape[0], x) if start_noise else None
        it = _start(x, eps, step_size, momentum, random_start, generator, backend, norm, noise)
        it = _iterate(model, it, y, loss_fn, steps, momentum, keep_best, backend, input_grad_only, norm)
        return _result(model, it, y, loss_fn, keep_best)


def l2_pgd(model, x, y=None, **settings) -> torch.Tensor:
    """`pgd` in L2."""
    return pgd(model, x, y, norm="l2", **settings)


def _keep_better(best_x, best_loss, x_new, loss_new):
    """Per sample, the iterate with the higher loss (ties and NaN keep the earlier one)."""
    if best_loss is None:
        return x_new, loss_new
    better = loss_new > best_loss
    mask = better.view(-1, *([1] * (x_new.dim() - 1)))
    return torch.where(mask, x_new, best_x), torch.where(better, loss_new, best_loss)


@dataclass
class PGD:
    """A PGD attack in `norm` ('l2' or 'linf') with fixed settings; call it as `attack(model, x, y)`.

    The defaults are textbook PGD (no momentum, no random start, last iterate). The authors'
    RATIO attack (ArgminPGD) is `PGD(eps, steps, step_size, momentum=0.9, keep_best=True, norm=...)`.
    """

    eps: float | torch.Tensor
    steps: int
    step_size: float | torch.Tensor
    momentum: float = 0.0
    random_start: bool = False
    start_noise: float = 0.0  # std of a Gaussian start around x (TRADES'); 0: start at x
    keep_best: bool = False
    objective: str | PerSampleLoss = "ce"
    backend: str = "auto"
    input_grad_only: bool = True
    check_inputs: bool = True  # refuse x outside [0,1], one host sync per call (False: see the module)
    norm: str = "l2"

    def __post_init__(self):
        check_attack_settings(self.eps, self.steps, self.objective, step_size=self.step_size)
        check_number("momentum", self.momentum, **MOMENTUM_RANGE)
        check_number("start_noise", self.start_noise, at_least=0)
        check_norm(self.norm)

    def __call__(self, model, x, y=None, generator=None) -> torch.Tensor:
        return pgd(
            model, x, y,
            eps=self.eps, steps=self.steps, step_size=self.step_size, norm=self.norm, momentum=self.momentum,
            random_start=self.random_start, start_noise=self.start_noise, keep_best=self.keep_best,
            objective=self.objective,
            backend=self.backend, generator=generator, input_grad_only=self.input_grad_only,
            check_inputs=self.check_inputs,
        )


@dataclass
class L2PGD(PGD):
    """PGD in L2. The authors' RATIO attack (ArgminPGD): `L2PGD(eps, steps, 0.1, momentum=0.9, keep_best=True)`."""

    norm: str = field(default="l2", init=False)


@dataclass
class LinfPGD(PGD):
    """PGD in L-infinity, by default Madry et al.'s: eps 8/255, step 2/255, 10 steps, a uniform
    random start in the box, the last iterate. The authors' ArgminPGD in L-infinity:
    `LinfPGD(eps, steps, step_size, momentum=0.9, keep_best=True, random_start=False)`."""

    eps: float | torch.Tensor = 8 / 255
    steps: int = 10
    step_size: float | torch.Tensor = 2 / 255
    random_start: bool = True
    norm: str = field(default="linf", init=False)


# Settings that must agree for two attacks to share one batch (per-sample eps, step size and
# objective are what the joint batch can differ in).
_SHARED = ("norm", "momentum", "random_start", "keep_best", "backend", "input_grad_only", "check_inputs")


def joint_pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    z: torch.Tensor,
    attack_x: PGD,
    attack_z: PGD,
    generator: torch.Generator | None = None,
    labels_z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(attack_x(model, x, y), attack_z(model, z, labels_z)) computed on the one batch cat([x, z]).

    In eval mode the samples of a batch are independent, so both attacks share each forward and
    backward: per-sample eps and step size, each half scored by its own objective, min(steps)
    steps together, then the attack with more steps continues alone on its half (each its own start
    noise). labels_z: z's labels where its objective reads them (TRADES' p(z)). Equal to the
    two separate calls up to the rounding differences of a larger batch (and, with random_start,
    different random draws).
    """
    mismatched = [name for name in _SHARED if getattr(attack_x, name) != getattr(attack_z, name)]
    if mismatched:
        raise ValueError(f"joint_pgd needs the two attacks to agree on {', '.join(mismatched)}")
    if attack_x.check_inputs:
        check_images(x)
        check_images(z, "z")
    objective_x, objective_z = resolve_objective(attack_x.objective), resolve_objective(attack_z.objective)
    objective_x.check_labels(y)
    objective_z.check_labels(labels_z)
    loss_x, loss_z = objective_x.loss, objective_z.loss
    n = x.shape[0]

    def joint_loss(logits, labels):
        return torch.cat([loss_x(logits[:n], labels), loss_z(logits[n:], labels_z)])

    a = attack_x  # the shared settings
    common = min(attack_x.steps, attack_z.steps)
    with attacking(model, a.input_grad_only):
        eps = torch.cat([per_sample(attack_x.eps, n, x), per_sample(attack_z.eps, z.shape[0], z)])
        step = torch.cat([per_sample(attack_x.step_size, n, x), per_sample(attack_z.step_size, z.shape[0], z)])
        noise = None
        if attack_x.start_noise or attack_z.start_noise:
            noise = torch.cat([per_sample(attack_x.start_noise, n, x), per_sample(attack_z.start_noise, z.shape[0], z)])
        it = _start(torch.cat([x, z]), eps, step, a.momentum, a.random_start, generator, a.backend, a.norm, noise)
        it = _iterate(model, it, y, joint_loss, common, a.momentum, a.keep_best, a.backend, a.input_grad_only,
                      a.norm)
        if attack_x.steps == attack_z.steps:
            joint = _result(model, it, y, joint_loss, a.keep_best)
            return joint[:n], joint[n:]
        results = []
        for rows, attack, loss_fn, labels in ((slice(0, n), attack_x, loss_x, y),
                                              (slice(n, None), attack_z, loss_z, labels_z)):
            part = _iterate(model, it.rows(rows), labels, loss_fn, attack.steps - common, a.momentum,
                            a.keep_best, a.backend, a.input_grad_only, a.norm)
            results.append(_result(model, part, labels, loss_fn, a.keep_best))
        return results[0], results[1]


joint_l2_pgd = joint_pgd  # its name from before L-infinity
