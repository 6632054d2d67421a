"""Input normalization that lives inside the model.

Models take images in [0, 1] and standardize them in `forward`, which is what RobustBench and
AutoAttack expect: an attack's eps-ball and the [0, 1] box are then in pixel space.
"""
from collections.abc import Sequence

import torch
from torch import nn

# Per-channel statistics of the training sets. The CIFAR-10 values are the ones RobustBench
# stores for Augustin2020Adversarial(_34_10), i.e. the values the RATIO models were trained with.
CIFAR10_MEAN = (0.4913997551666284, 0.48215855929893703, 0.4465309133731618)
CIFAR10_STD = (0.24703225141799082, 0.24348516474564, 0.26158783926049628)
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)


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

    def __init__(self, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        sigma = _channel_stats(std, "std")
        if not bool((sigma > 0).all()):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mu", _channel_stats(mean, "mean"))
        self.register_buffer("sigma", sigma)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.sigma
