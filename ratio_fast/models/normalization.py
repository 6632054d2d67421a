"""Input normalization that lives inside the model.

Models take images in [0, 1] and standardize them in `forward`, which is what RobustBench and
AutoAttack expect: an attack's eps-ball and the [0, 1] box are then in pixel space. The
statistics come from the data set's row in `ratio_fast.datasets` (CIFAR-10's by default).
"""
from collections.abc import Sequence

import torch
from torch import nn

from ..datasets import CIFAR10


def _channel_stats(values: Sequence[float], what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() != 3:
        raise ValueError(f"{what} needs 3 values (one per RGB channel), got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} must be finite, got {list(values)}")
    return t.view(1, 3, 1, 1)


class NormalizedModel(nn.Module):
    """Base class: holds the `mu` / `sigma` buffers and applies them.

    The buffer names `mu` and `sigma` are RobustBench's (e.g. `Augustin2020AdversarialWideNet`
    in robustbench/model_zoo/cifar10.py registers exactly these two, shape (1, 3, 1, 1), on the
    network itself). Keeping them top-level and with these names means our state_dict loads
    into the RobustBench class with `strict=True`, so exporting a checkpoint is a plain save.
    Buffers (not constants) also follow `.to(device)` and end up in checkpoints.
    """

    def __init__(self, mean: Sequence[float] = CIFAR10.mean, std: Sequence[float] = CIFAR10.std):
        super().__init__()
        sigma = _channel_stats(std, "std")
        if not bool((sigma > 0).all()):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mu", _channel_stats(mean, "mean"))
        self.register_buffer("sigma", sigma)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.sigma
