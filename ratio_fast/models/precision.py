"""Keep a model's first convolution in fp32 under autocast.

Under bf16 autocast a PGD step of 0.1 on a 3072-pixel image moves each pixel by about one bf16
ulp, so casting the input to bf16 before the first convolution would round most of the
perturbation (and the input gradient) away. Only the first convolution sees raw pixels; after
it, activations are large relative to the perturbation's effect and bf16 is fine.

"fp32" here means IEEE fp32: on Ampere and newer GPUs cuDNN runs fp32 convolutions in TF32
(10-bit mantissa) unless told otherwise, which would undo the point. `ieee_fp32_convolutions`
tells it otherwise for the span of a step (the backward pass included, which runs after the
first convolution's forward has returned, so a context around that forward alone would miss it).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

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


def fp32_conv_math(device: torch.device | str) -> str:
    """How fp32 convolutions on `device` run now: 'tf32' (cuDNN's TF32, torch's default on CUDA)
    or 'ieee' (true fp32; always on a CPU, whose convolutions have no TF32 mode here)."""
    if torch.device(device).type != "cuda":
        return "ieee"
    return "tf32" if torch.backends.cudnn.conv.fp32_precision == "tf32" else "ieee"


@contextmanager
def ieee_fp32_convolutions() -> Iterator[None]:
    """Inside: cuDNN runs fp32 convolutions in IEEE fp32, not TF32. After: the previous setting.

    Set through the flag that covers cuDNN's convolutions and RNNs together
    (`torch.backends.cudnn.allow_tf32`): torch 2.11-2.13 keep it and the per-op
    `torch.backends.cudnn.conv.fp32_precision` in step, whereas setting the per-op value alone
    makes every later read of `allow_tf32` raise ("a mix of the legacy and new APIs").
    """
    cudnn = torch.backends.cudnn
    saved_ops = cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision
    try:
        saved_flag = cudnn.allow_tf32
    except RuntimeError:  # someone mixed the two interfaces: the per-op values restore what matters
        saved_flag = None
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        if saved_flag is not None:
            cudnn.allow_tf32 = saved_flag
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved_ops
