"""ResNet-18 / ResNet-50 with the CIFAR stem (3x3 conv, stride 1, no max-pool).

Names follow the widely used CIFAR layout (`conv1`, `bn1`, `layer1..4`, `shortcut`, `linear`),
which is also RobustBench's `model_zoo/architectures/resnet.py`; RobustBench's
`Augustin2020Adversarial` (the ResNet-50 RATIO model) is that ResNet-50 plus `mu`/`sigma`
buffers, so our `resnet50` state_dict maps onto it key for key.
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import CIFAR10
from .normalization import NormalizedModel


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    # nn.Sequential() with no modules is the identity and, like the reference, keeps the
    # attribute present (and the state_dict key set identical) whether or not it projects.
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(NormalizedModel):
    """Four stages of 64/128/256/512 planes (times the block's expansion); returns logits."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: Sequence[int],
                 num_classes: int = 10, mean: Sequence[float] = CIFAR10.mean,
                 std: Sequence[float] = CIFAR10.std):
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        # PyTorch's default initialization is kept on purpose: it is what the common CIFAR
        # ResNet code (and RobustBench's copy of it) trains with.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int = 10, mean: Sequence[float] = CIFAR10.mean,
             std: Sequence[float] = CIFAR10.std) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, mean, std)


def resnet50(num_classes: int = 10, mean: Sequence[float] = CIFAR10.mean,
             std: Sequence[float] = CIFAR10.std) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, mean, std)
