"""Pre-activation WideResNet (Zagoruyko & Komodakis 2016), the RATIO / RobustBench variant.

Compatibility: the module and attribute names below (`conv1`, `block{1,2,3}.layer.{i}`,
`bn1`/`conv1`/`bn2`/`conv2`/`convShortcut` inside a block, final `bn1`, `fc`) and the
normalization buffers `mu`/`sigma` are exactly those of RobustBench's
`model_zoo/architectures/wide_resnet.py` + `Augustin2020AdversarialWideNet`, which in turn
follow the TRADES code the RATIO authors used. That is why they are not PEP 8 (`convShortcut`)
and why the stage container is called `layer`: a state_dict of ours loads into RobustBench's
model (and published RATIO checkpoints load into ours) without renaming keys.
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import CIFAR10
from .normalization import NormalizedModel


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        # As in the reference, the projection depends on the channel count only: a strided
        # block with equal channels would keep an identity shortcut (never happens for the
        # widths used here, where every strided block also changes width).
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        else:
            self.convShortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        # The projection shortcut reads the pre-activated input, the identity one the raw
        # input: that asymmetry is the reference's and the weights depend on it.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = self.conv1(act)
        out = F.relu(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: `num_layers` BasicBlocks, the first one does the stride and width change."""

    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                       stride if i == 0 else 1, drop_rate)
            for i in range(num_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(NormalizedModel):
    """WRN-depth-widen_factor for 32x32 inputs in [0, 1]; returns logits."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10,
                 drop_rate: float = 0.0, mean: Sequence[float] = CIFAR10.mean,
                 std: Sequence[float] = CIFAR10.std):
        super().__init__(mean, std)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

        # Same initialization as the reference: He-normal with fan_out for convs, BN as
        # identity, zero fc bias (the fc weight keeps PyTorch's default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        # Global mean instead of the reference's avg_pool2d(8): identical on 32x32 inputs,
        # and flatten() instead of view() works for channels_last outputs too.
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
