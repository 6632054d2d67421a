"""Keep a model's first convolution in fp32 under autocast.

Under bf16 autocast a PGD step of 0.1 on a 3072-pixel image moves each pixel by about one bf16
ulp, so casting the input to bf16 before the first convolution would round most of the
perturbation (and the input gradient) away. Only the first convolution sees raw pixels; after
it, activations are large relative to the perturbation's effect and bf16 is fine.
"""
from __future__ import annotations

import torch
from torch import nn


class Fp32Conv2d(nn.Conv2d):
    """An nn.Conv2d that runs in fp32 with autocast disabled; its output is fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first nn.Conv2d in registration order (the stem of every model in the zoo)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d to keep in fp32")


def keep_first_conv_fp32(model: nn.Module) -> nn.Module:
    """Make the model's first convolution an Fp32Conv2d, in place; returns the model.

    The module's class is swapped rather than the module wrapped, so parameter names, the
    state_dict and checkpoints stay exactly as they were.
    """
    conv = first_conv(model)
    if type(conv) is nn.Conv2d:
        conv.__class__ = Fp32Conv2d
    elif not isinstance(conv, Fp32Conv2d):
        raise ValueError(f"the first convolution is a {type(conv).__name__}, not a plain nn.Conv2d")
    return model
