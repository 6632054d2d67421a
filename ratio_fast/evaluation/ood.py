"""Out-of-distribution detection metrics, scoring every input by its max softmax confidence.

Convention (as in the Outlier Exposure and RATIO papers): the in-distribution is the positive
class and a higher score means "more in-distribution". AUROC is the probability that a random
in-distribution input scores higher than a random out-distribution one, ties counting one half.
FPR at 95 % TPR is the fraction of out-distribution inputs that score at least as high as the
threshold that keeps 95 % of the in-distribution.

These run once per evaluation on the CPU, on all scores at once; they sync freely.
"""
from __future__ import annotations

import math

import torch


def max_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample max softmax probability, in fp32."""
    return logits.float().softmax(dim=1).amax(dim=1)


def _scores(values) -> torch.Tensor:
    t = torch.as_tensor(values).detach().to("cpu", torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError("OOD metrics need at least one score on each side")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("OOD scores must be finite")
    return t


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve, in-distribution positive, from tie-averaged ranks (Mann-Whitney U)."""
    s_in, s_out = _scores(scores_in), _scores(scores_out)
    ranks = _average_ranks(torch.cat([s_in, s_out]))
    n_in, n_out = s_in.numel(), s_out.numel()
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2
    return float(u / (n_in * n_out))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of values, tied values sharing the mean of their ranks."""
    order = values.argsort(stable=True)
    _, inverse, counts = torch.unique(values[order], return_inverse=True, return_counts=True)
    last = counts.cumsum(0).to(torch.float64)  # rank of the last member of each tie group
    mean_rank = last - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = mean_rank[inverse]
    return ranks


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate is at least `tpr`.

    Positives are the in-distribution; a score >= threshold is called "in-distribution".
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s_in, s_out = _scores(scores_in), _scores(scores_out)
    # Keeping the ceil(tpr * n) highest in-distribution scores allows k = n - that below it.
    k = s_in.numel() - math.ceil(round(tpr * s_in.numel(), 9))
    threshold = s_in.sort().values[k]
    return float((s_out >= threshold).double().mean())


def ood_metrics(scores_in, scores_out) -> dict[str, float]:
    """AUROC, FPR at 95 % TPR and the mean max confidence on the out-distribution."""
    return {
        "auroc": auroc(scores_in, scores_out),
        "fpr95": fpr_at_tpr(scores_in, scores_out, 0.95),
        "mean_max_conf": float(_scores(scores_out).mean()),
    }
