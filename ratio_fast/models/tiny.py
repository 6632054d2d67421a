"""A small, fast CNN for CPU runs, smoke tests and convergence tests.

It is not meant to be accurate on CIFAR; it is meant to make an adversarial-training step
cheap enough for CI: forward+backward of 128 images takes ~10 ms on two CPU cores. The
first conv is already strided because full-resolution 3x3 convs dominate the cost on CPU
(a stride-1 stem makes the whole net about 4x slower). BatchNorm is kept so that the
train/eval-mode handling of the trainer and the attacks is exercised as with the big models.
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import CIFAR10
from .normalization import NormalizedModel


class TinyNet(NormalizedModel):
    """conv3x3/2-BN-ReLU stages, global average pool, linear; returns logits."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 mean: Sequence[float] = CIFAR10.mean, std: Sequence[float] = CIFAR10.std):
        super().__init__(mean, std)
        layers: list[nn.Module] = []
        in_ch = 3
        for w in widths:
            layers += [nn.Conv2d(in_ch, w, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            in_ch = w
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.normalize(x))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
