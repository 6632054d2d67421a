"""The attacks `train --attack` names (choices.TRAINING_ATTACKS), one builder each.

    attack = build_attack("pgd", eps=0.5, steps=10, step_size=0.1, momentum=0.9, objective="ce", norm="l2")
    x_adv = attack(model, x, y)

A builder turns the settings every training attack gets (radius, steps, step size, momentum,
objective, backend, ...) into the attack object; one that sets its own step sizes (APGD) leaves
the step size and momentum out. The trainer builds both of a step's attacks here and the run's
per-epoch robust accuracy its in-distribution one, so both follow --attack. Adding a training
attack is a row of choices.ATTACKS and a builder below (`check_builders` fails at import on a
row without one).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..choices import TRAINING_ATTACKS, check_builders
from ..validation import lookup
from .apgd import APGD
from .pgd import PGD
from .objectives import PerSampleLoss


@dataclass(frozen=True)
class AttackSettings:
    """What a training attack is asked for, whichever attack it is."""

    eps: float
    steps: int
    step_size: float
    momentum: float
    objective: str | PerSampleLoss
    norm: str = "l2"  # choices.NORMS
    backend: str = "auto"
    input_grad_only: bool = True  # the weights stay frozen while it attacks (PGD; APGD always is)
    check_inputs: bool = True  # refuse x outside [0,1], one host sync per call (attacks/pgd.py)
    start_noise: float = 0.0  # a Gaussian start around x (the objective's, objectives.Objective.start_noise)


def _argmin_pgd(s: AttackSettings) -> PGD:
    """The authors' ArgminPGD: momentum on the L1-normalized gradient, the best iterate."""
    return PGD(s.eps, s.steps, s.step_size, momentum=s.momentum, keep_best=True, objective=s.objective,
               backend=s.backend, input_grad_only=s.input_grad_only, check_inputs=s.check_inputs,
               start_noise=s.start_noise, norm=s.norm)


def _apgd(s: AttackSettings) -> APGD:
    """APGD with its own step-size schedule, momentum and random start (the settings' are not used)."""
    return APGD(s.eps, s.steps, objective=s.objective, backend=s.backend, check_inputs=s.check_inputs, norm=s.norm)


BUILDERS: dict[str, Callable[[AttackSettings], Callable]] = {"pgd": _argmin_pgd, "apgd": _apgd}
check_builders(BUILDERS, TRAINING_ATTACKS, __name__)


def build_attack(name: str, **settings) -> Callable:
    """The training attack `name` (a row of choices.TRAINING_ATTACKS) with these AttackSettings,
    called as attack(model, x, y)."""
    lookup(TRAINING_ATTACKS, name, "--attack", "training attack")
    return BUILDERS[name](AttackSettings(**settings))
