"""The two tensor operations every loader shares: crop+flip on uint8, and the model's input format.

``crop_flip`` is the gpu and torch loaders' augmentation (DALI does the same with its own slice
and flip operators); ``to_model_input`` is the last step of all three, so their outputs agree
bit for bit: they differ only in where the uint8 pixels were cropped. Cutout (DeVries & Taylor
2017) is part of that last step, so all three loaders cut the same squares the same way.
"""

from __future__ import annotations

import torch

from ratio_fast.data.plan import PAD

CUTOUT_SIZE = 16  # side of the zeroed square, as DeVries & Taylor use for CIFAR-10


def crop_flip(images: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor,
              flip: torch.Tensor) -> torch.Tensor:
    """Random crop with ``PAD`` pixels of zero padding plus horizontal flip, as one gather.

    ``images`` uint8 (N, H, W, 3); ``rows`` (B,) which images; ``shift`` (B, 2) = (dy, dx) in
    [0, 2*PAD]; ``flip`` (B,) 0/1. Output pixel (i, j) of sample b comes from image rows[b] at
    row i + dy - PAD and column j' + dx - PAD, where j' = W-1-j when flipped; sources outside
    the image are the padding zeros. (Cropping the padded image then flipping is the same.)
    """
    h, w = images.shape[1], images.shape[2]
    dev = images.device
    src_rows = torch.arange(h, device=dev) + (shift[:, :1] - PAD)  # (B, H)
    cols = torch.arange(w, device=dev).expand(len(rows), w)
    src_cols = torch.where(flip[:, None].bool(), (w - 1) - cols, cols) + (shift[:, 1:] - PAD)  # (B, W)
    inside = (((src_rows >= 0) & (src_rows < h))[:, :, None]
              & ((src_cols >= 0) & (src_cols < w))[:, None, :])
    x = images[rows[:, None, None], src_rows.clamp(0, h - 1)[:, :, None], src_cols.clamp(0, w - 1)[:, None, :]]
    return x * inside[..., None].to(x.dtype)  # (B, H, W, 3), padding pixels zeroed


def to_model_input(images: torch.Tensor, channels_last: bool,
                   cutout: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], channels_last memory if asked.

    ``cutout``: int64 (B, 2) centres (cy, cx) on ``images``' device, or None. Each image gets
    rows [cy - 8, cy + 8) and columns [cx - 8, cx + 8) zeroed, clipped at the border: the
    centre is anywhere on the image, so the square may lie partly outside it (as in the paper).
    """
    if cutout is not None:
        images = images.masked_fill(_cutout_squares(cutout, images.shape[1], images.shape[2])[..., None], 0)
    # NHWC uint8 viewed as NCHW is channels_last already; .float() keeps the strides.
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _cutout_squares(centres: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool (B, H, W): True inside each image's square, which starts CUTOUT_SIZE // 2 before its centre."""
    start = centres - CUTOUT_SIZE // 2  # (B, 2)
    rows = torch.arange(height, device=centres.device) - start[:, :1]  # (B, H): offset into the square
    cols = torch.arange(width, device=centres.device) - start[:, 1:]  # (B, W)
    in_rows = (rows >= 0) & (rows < CUTOUT_SIZE)
    in_cols = (cols >= 0) & (cols < CUTOUT_SIZE)
    return in_rows[:, :, None] & in_cols[:, None, :]
