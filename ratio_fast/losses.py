"""The losses RATIO attacks and trains on; per-sample forms are what the attacks maximize."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def ratio_loss(
    logits_in: torch.Tensor, labels: torch.Tensor, logits_out: torch.Tensor | None, lam: float
) -> torch.Tensor:
    """0.5 * CE(in) + 0.5 * lam * KL(U || p(out)); plain CE when there is no out-distribution batch."""
    ce = cross_entropy(logits_in, labels).mean()
    if logits_out is None:
        return ce
    return 0.5 * ce + 0.5 * lam * kl_to_uniform(logits_out).mean()
