"""The losses RATIO attacks and trains on, and the attack objectives by name.

Per-sample forms are what the attacks maximize. `OBJECTIVES` names each with what its labels
must be; every attack (PGD, APGD) and their callers turn a name into an `Objective` with
`resolve_objective`, the one place that knows the names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..choices import ADVERSARIAL, CE, KL_UNIFORM, MODES, TRADES_KL, Mode

# loss(logits, labels) -> per-sample loss (N,); labels may be None where the loss ignores them
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

DLR_EPS = 1e-12  # AutoAttack's: keeps the DLR denominators away from 0


def at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits as fp32; fp32 and fp64 (the attacks' fp64 oracle tests) as they are."""
    return logits if logits.dtype == torch.float64 else logits.float()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy, computed in at least fp32 whatever the autocast dtype."""
    return F.cross_entropy(at_least_fp32(logits), labels, reduction="none")


def kl_to_uniform(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample KL(U || softmax(logits)) = mean_k(-log p_k) - log K; 0 exactly when p is uniform.

    `labels` is ignored (the out-distribution has none); it is accepted so every objective has
    the same signature.
    """
    log_p = F.log_softmax(at_least_fp32(logits), dim=1)
    return -log_p.mean(dim=1) - math.log(logits.shape[1])


def kl_from_target(logits: torch.Tensor, target_probabilities: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(q || softmax(logits)) = sum_k q_k (log q_k - log p_k), q the target
    distribution (TRADES: the clean prediction p(x)); summed over classes as TRADES' 'batchmean'."""
    log_p = F.log_softmax(at_least_fp32(logits), dim=1)
    q = at_least_fp32(target_probabilities)
    return (torch.xlogy(q, q) - q * log_p).sum(dim=1)


def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss, -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); > 0 iff misclassified."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    z = at_least_fp32(logits)
    top = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    is_top = z.argmax(1) == labels
    best_other = torch.where(is_top, top[:, 1], top[:, 0])
    return -(z_y - best_other) / (top[:, 0] - top[:, 2] + DLR_EPS)


def targeted_dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (AutoAttack's APGD-T), -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).

    Not in OBJECTIVES: it needs the true and the target class, so APGDTargeted builds it per row.
    """
    z = at_least_fp32(logits)
    top = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    z_t = z.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_EPS)


def max_log_confidence(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """max_k log p_k: the worst-case out-distribution attack makes the model confident. Labels ignored."""
    return F.log_softmax(at_least_fp32(logits), dim=1).amax(dim=1)


def target_log_probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p_target (targeted CE, negated): counterfactuals push the target class's probability up."""
    return -cross_entropy(logits, targets)


@dataclass(frozen=True)
class Objective:
    """A per-sample loss an attack maximizes, `loss(logits, labels)`, and what its labels are.

    needs_labels: the loss reads the labels, so an attack without them is refused before it runs.
    labels_are_true_classes: the labels are the true classes, so an iterate with argmax != label
    is misclassified (APGD counts AutoAttack's success only for these).
    """

    name: str
    loss: PerSampleLoss
    needs_labels: bool
    labels_are_true_classes: bool = False
    # A PGD attack on it starts at x + start_noise * N(0, I), not at x: TRADES' KL has a zero
    # gradient at x itself (TRADES' start, 0.001 * randn). APGD starts at a random point anyway.
    start_noise: float = 0.0

    def check_labels(self, labels: torch.Tensor | None) -> None:
        if self.needs_labels and labels is None:
            raise ValueError(f"the {self.name!r} objective needs labels y")


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    # in-distribution: push the true class down (training, APGD-CE)
    Objective(CE, cross_entropy, needs_labels=True, labels_are_true_classes=True),
    # APGD-DLR: the margin to the best other class, scale-free
    Objective("dlr", dlr, needs_labels=True, labels_are_true_classes=True),
    # out-distribution in training: make the model confident (no labels)
    Objective(KL_UNIFORM, kl_to_uniform, needs_labels=False),
    # TRADES: move the prediction away from the clean one; the labels are p(x), (N, classes)
    Objective(TRADES_KL, kl_from_target, needs_labels=True, start_noise=0.001),
    # out-distribution in evaluation: the worst-case max confidence (no labels)
    Objective("max_conf", max_log_confidence, needs_labels=False),
    # counterfactuals: the labels are the target classes
    Objective("target_ce", target_log_probability, needs_labels=True),
)}


def resolve_objective(objective: str | PerSampleLoss) -> Objective:
    """The registered objective of that name; a callable becomes one whose needs are its own
    (its labels are passed as given, never checked, never read as the true classes)."""
    if callable(objective):
        return Objective(getattr(objective, "__name__", repr(objective)), objective, needs_labels=False)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)} or a callable, got {objective!r}")
    return OBJECTIVES[objective]


@dataclass(frozen=True)
class TrainLogits:
    """The train forward's logits of each kind of image a --mode row trains on; None where it has none."""

    clean_in: torch.Tensor | None  # f(x)
    adversarial_in: torch.Tensor | None  # f(x_adv)
    clean_out: torch.Tensor | None  # f(z)
    adversarial_out: torch.Tensor | None  # f(z_adv)


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _weighted(weight: float, value: torch.Tensor) -> torch.Tensor:
    return value if weight == 1.0 else weight * value


def mode_loss(mode: Mode, logits: TrainLogits, labels: torch.Tensor, lam: float, trades_beta: float = 6.0,
              trades_beta_out: float = 6.0, train_clean: bool = False) -> torch.Tensor:
    """The training loss of --mode `mode` (a row of choices.MODES, whose docstring writes it out)."""
    in_terms = []
    if mode.clean_in or (train_clean and mode.clean_in_optional):
        in_terms.append(cross_entropy(logits.clean_in, labels).mean())
    if mode.attacks_in and not mode.in_trades:
        in_terms.append(cross_entropy(logits.adversarial_in, labels).mean())
    if mode.in_trades:  # the target p(x) keeps its gradient, as in TRADES and the authors' code
        clean_p = at_least_fp32(logits.clean_in).softmax(dim=1)
        in_terms.append(trades_beta * kl_from_target(logits.adversarial_in, clean_p).mean())
    loss = _weighted(mode.in_weight, _total(in_terms))
    if not mode.uses_out_data:
        return loss
    out_terms = [kl_to_uniform(logits.adversarial_out if mode.out_images == ADVERSARIAL else logits.clean_out).mean()]
    if mode.out_trades:
        clean_p = at_least_fp32(logits.clean_out).softmax(dim=1)
        out_terms.append(trades_beta_out * kl_from_target(logits.adversarial_out, clean_p).mean())
    return loss + mode.out_weight * lam * _total(out_terms)


def ratio_loss(
    logits_in: torch.Tensor, labels: torch.Tensor, logits_out: torch.Tensor | None, lam: float
) -> torch.Tensor:
    """0.5 * CE(in) + 0.5 * lam * KL(U || p(out)); plain CE when there is no out-distribution batch."""
    if logits_out is None:
        return mode_loss(MODES["at"], TrainLogits(None, logits_in, None, None), labels, lam)
    return mode_loss(MODES["ratio"], TrainLogits(None, logits_in, None, logits_out), labels, lam)
