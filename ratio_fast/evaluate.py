"""Accuracy of a model on clean and attacked inputs, in batches, with one host sync per call."""
from __future__ import annotations

import torch

from .attacks import L2PGD


@torch.no_grad()
def clean_accuracy(model: torch.nn.Module, batches) -> float:
    """Fraction of correct top-1 predictions over an iterable of (x, y) batches, model in eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct = correct + (model(x).argmax(1) == y).sum()
        total += y.shape[0]
    model.train(was_training)
    return float(correct) / max(total, 1)


def robust_accuracy(model: torch.nn.Module, batches, attack: L2PGD) -> float:
    """Fraction still classified correctly after `attack` (an upper bound on the true robust accuracy)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        x_adv = attack(model, x, y)
        with torch.no_grad():
            correct = correct + (model(x_adv).argmax(1) == y).sum()
        total += y.shape[0]
    model.train(was_training)
    return float(correct) / max(total, 1)
