"""An --augment row (``choices.AUGMENTATIONS``) as batched tensor operations on uint8 (B, H, W, 3)
images, on any device.

The gpu loader runs them on the device, the torch loader in its CPU workers: the same torch
operations, so both give the same batches bit for bit. They realize the draws of a ``plan.BatchPlan``:

- crop and flip: random crop from a PAD-pixel padding, then horizontal flip, as one gather. The
  padding is the row's ``crop_fill``: the mean colour (the authors' ``RandomCrop(fill=mean)``)
  or zeros.
- AutoAugment (``autoaugment.py``), when the row runs it.
- ``Augmenter.model_input``: uint8 to float [0, 1] NCHW, with the row's Cutout (DeVries & Taylor
  2017) filled in float with the mean colour, as the authors' ``Cutout(fill_color=mean)`` does.
"""

from __future__ import annotations

import torch

from ratio_fast.choices import MEAN_COLOUR, Augmentation
from ratio_fast.data.autoaugment import AutoAugment
from ratio_fast.data.plan import PAD


def fill_colour(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The uint8 mean colour (the crop padding and shear/translate fill): ``int(255 * mean)`` per
    channel, truncated as the authors write it (CIFAR-10: (125, 122, 113))."""
    return tuple(int(255.0 * v) for v in mean)


def padding_colour(augmentation: Augmentation, mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The uint8 colour of an augmentation's crop padding, for a data set of mean colour ``mean``."""
    return fill_colour(mean) if augmentation.crop_fill == MEAN_COLOUR else (0, 0, 0)


class Augmenter:
    """One --augment row on one device, for a data set of mean colour ``mean`` (in [0, 1]): the
    uint8 part of a batch (crop and flip, AutoAugment) and its conversion to model input (Cutout)."""

    def __init__(self, augmentation: Augmentation, mean: tuple[float, float, float], image_hw: tuple[int, int],
                 device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.augmentation = augmentation
        self.pad_fill = torch.tensor(padding_colour(augmentation, mean), dtype=torch.uint8, device=self.device)
        self.autoaugment = AutoAugment(image_hw, fill_colour(mean), self.device) if augmentation.autoaugment else None
        self.cutout_fill = torch.tensor(mean, dtype=torch.float32, device=self.device)

    def pixels(self, images: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor | None,
               flip: torch.Tensor | None, codes: torch.Tensor | None) -> torch.Tensor:
        """uint8 (B, H, W, 3): ``images[rows]`` cropped, flipped and AutoAugmented as planned."""
        if self.augmentation.crop_fill is None:
            x = images[rows]
        else:
            x = crop_flip(images, rows, shift, flip, self.pad_fill)
        return x if self.autoaugment is None else self.autoaugment(x, codes)

    def model_input(self, pixels: torch.Tensor, channels_last: bool, cutout: torch.Tensor | None) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], channels_last memory if asked.

        ``cutout``: the planned int64 (B, 2) centres (cy, cx) on the pixels' device, or None. Each
        image gets rows [cy - s/2, cy + s/2) and columns [cx - s/2, cx + s/2) (s: the row's
        ``cutout_size``), clipped at the border, set to the mean colour: the centre is anywhere
        on the image, so the square may lie partly outside it (as in the paper and the authors' code).
        """
        # NHWC uint8 viewed as NCHW is channels_last already; .float() keeps the strides.
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        if cutout is not None:
            square = _squares(cutout, self.augmentation.cutout_size, pixels.shape[1], pixels.shape[2])
            x = torch.where(square[:, None], self.cutout_fill[None, :, None, None], x)
        return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def crop_flip(images: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor,
              fill: torch.Tensor) -> torch.Tensor:
    """Random crop from a ``PAD``-pixel padding plus horizontal flip, as one gather.

    ``images`` uint8 (N, H, W, 3); ``rows`` (B,) which images; ``shift`` (B, 2) = (dy, dx) in
    [0, 2*PAD]; ``flip`` (B,) 0/1; ``fill`` uint8 (3,) padding colour. Output pixel (i, j) of
    sample b comes from image rows[b] at row i + dy - PAD and column j' + dx - PAD, where
    j' = W-1-j when flipped; sources outside the image are padding. (Cropping the padded image
    then flipping is the same.)
    """
    h, w = images.shape[1], images.shape[2]
    dev = images.device
    src_rows = torch.arange(h, device=dev) + (shift[:, :1] - PAD)  # (B, H)
    cols = torch.arange(w, device=dev).expand(len(rows), w)
    src_cols = torch.where(flip[:, None].bool(), (w - 1) - cols, cols) + (shift[:, 1:] - PAD)  # (B, W)
    inside = (((src_rows >= 0) & (src_rows < h))[:, :, None]
              & ((src_cols >= 0) & (src_cols < w))[:, None, :])
    x = images[rows[:, None, None], src_rows.clamp(0, h - 1)[:, :, None], src_cols.clamp(0, w - 1)[:, None, :]]
    return torch.where(inside[..., None], x, fill)


def _squares(centres: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """bool (B, H, W): True inside each image's square of side ``size``, which starts size // 2
    before its centre."""
    start = centres - size // 2  # (B, 2)
    rows = torch.arange(height, device=centres.device) - start[:, :1]  # (B, H): offset into the square
    cols = torch.arange(width, device=centres.device) - start[:, 1:]  # (B, W)
    in_rows = (rows >= 0) & (rows < size)
    in_cols = (cols >= 0) & (cols < size)
    return in_rows[:, :, None] & in_cols[:, None, :]
