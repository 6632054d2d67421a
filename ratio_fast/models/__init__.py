"""Model zoo: every model takes images in [0, 1] (NCHW, channels_last allowed), normalizes
them inside `forward` with its `mu`/`sigma` buffers and returns logits.

`create_model(name)` builds a row of choices.ARCHITECTURES (--arch) with its builder below,
checked at import to cover exactly the rows. Models are built on the CPU; moving them to a
device is the caller's business.
"""
from collections.abc import Callable, Sequence

from torch import nn

from ..choices import ARCHITECTURES, check_builders
from ..datasets import CIFAR10
from ..validation import lookup
from .modes import eval_mode
from .normalization import NormalizedModel
from .precision import Fp32Conv2d, keep_first_conv_fp32
from .resnet import ResNet, resnet18, resnet50
from .tiny import TinyNet
from .wide_resnet import WideResNet

__all__ = [
    "MODEL_NAMES", "Fp32Conv2d", "NormalizedModel", "ResNet", "TinyNet", "WideResNet", "create_model", "eval_mode",
    "keep_first_conv_fp32",
]

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "wrn34": lambda **kw: WideResNet(depth=34, widen_factor=10, **kw),
    "wrn28": lambda **kw: WideResNet(depth=28, widen_factor=10, **kw),
    "resnet18": resnet18,
    "resnet50": resnet50,
    "tiny": TinyNet,
}
check_builders(BUILDERS, ARCHITECTURES, __name__)

MODEL_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)


def create_model(name: str, num_classes: int = 10, mean: Sequence[float] = CIFAR10.mean,
                 std: Sequence[float] = CIFAR10.std) -> nn.Module:
    """Build architecture `name` (one of MODEL_NAMES; else a UserError naming --arch) on the CPU, freshly initialized."""
    lookup(ARCHITECTURES, name, "--arch", "architecture")
    builder = BUILDERS[name]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return builder(num_classes=num_classes, mean=mean, std=std)
