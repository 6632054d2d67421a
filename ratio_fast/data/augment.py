"""The augmentations as batched tensor operations on uint8 (B, H, W, 3) images, on any device.

The gpu loader runs them on the device, the torch loader in its CPU workers: the same torch
operations, so both give the same batches bit for bit. They realize the draws of a ``plan.BatchPlan``:

- ``crop_flip``: random crop from a PAD-pixel padding, then horizontal flip, as one gather. The
  padding is the fill colour (the authors' ``RandomCrop(fill=mean)``), or zeros (``crop_flip``).
- ``AutoAugment``: the CIFAR-10 policy (``plan.CIFAR10_POLICY``) per sample, matching the PIL
  reference implementation the authors train with (Pillow's ``ImageOps``/``ImageEnhance``/affine
  ``transform``) bit for bit: the same integer and floating-point arithmetic in the same order
  (tests/test_data_augment.py compares every operation and magnitude with PIL). Each of the
  two stages is three batched passes, each an identity for the samples that draw another kind:
  one resampling for the geometric operations (shear: PIL's bicubic along the sheared axis;
  translate and rotate: PIL's nearest neighbour; fills as in the reference), one per-image
  lookup table for the point operations (invert, solarize, posterize, and autocontrast and
  equalize from per-image histograms), one blend with a per-image "degenerate" image for the
  enhance operations (brightness, contrast, color, sharpness). On CPU tensors each pass works
  on the samples that need it only (reading the codes is free there); on CUDA every pass runs
  on the whole batch, so nothing waits for the host. Both give the same bits.
- ``to_model_input``: uint8 to float [0, 1] NCHW, with Cutout (DeVries & Taylor 2017) filled in
  float with the mean colour as the authors' ``Cutout(fill_color=mean)`` does, or zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ratio_fast.data.plan import CIFAR10_POLICY, NUM_AUTOAUGMENT_CODES, PAD, STAGES, decode_autoaugment

AUGMENTATIONS = ("autoaugment_cutout", "crop_flip", "none")  # --augment, described in Augmenter
CUTOUT_SIZE = 16  # side of the square, as DeVries & Taylor use for CIFAR-10 (and the authors)
ROTATE_FILL = 128  # the reference rotates through RGBA and composites onto grey 128, not the fill colour

# Magnitude of each operation per bin 0..9, as the reference implementation's grids give them.
MAGNITUDES: dict[str, np.ndarray] = {
    "shearX": np.linspace(0, 0.3, 10),  # shear factor
    "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),  # fraction of the image size
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),  # degrees
    "color": np.linspace(0.0, 0.9, 10),  # enhance factor 1 +- magnitude
    "contrast": np.linspace(0.0, 0.9, 10),
    "sharpness": np.linspace(0.0, 0.9, 10),
    "brightness": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(np.int64),  # bits kept
    "solarize": np.linspace(256, 0, 10),  # threshold
    "autocontrast": np.zeros(10),
    "equalize": np.zeros(10),
    "invert": np.zeros(10),
}
# Operations whose magnitude the reference negates at random; rotate always turns counter-clockwise.
SIGNED = frozenset({"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness",
                    "brightness"})
GEOMETRIC = ("shearX", "shearY", "translateX", "translateY", "rotate")
ENHANCE = ("brightness", "contrast", "color", "sharpness")

_KEEP, _FILL, _ROTATE_FILL = 0, 1, 2  # what a geometric operation puts at a pixel: its source, or a fill


def fill_colour(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The uint8 fill of the crop padding and of shear/translate: ``int(255 * mean)`` per channel,
    truncated as the authors write it (CIFAR-10: (125, 122, 113))."""
    return tuple(int(255.0 * v) for v in mean)


def signed_magnitude(name: str, magnitude_bin: int, sign: int) -> float:
    """The parameter of an operation at a bin, with the drawn sign where the reference draws one."""
    value = MAGNITUDES[name][magnitude_bin]
    return float(value) * (sign if name in SIGNED else 1)


class Augmenter:
    """One ``--augment`` setting on one device: the uint8 part of a batch (crop and flip,
    AutoAugment) and its conversion to model input (Cutout).

    - ``autoaugment_cutout`` (the authors' ``--augm autoaugment_cutout``): crop from a padding of
      the mean colour, flip, AutoAugment (shear/translate fill: the mean colour), Cutout 16x16
      filled with the mean colour; ``mean`` is the data set's, in [0, 1].
    - ``crop_flip``: crop from a zero padding and flip (ratio-fast's earlier default).
    - ``none``: the images as they are.
    """

    def __init__(self, name: str, mean: tuple[float, float, float], image_hw: tuple[int, int],
                 device: torch.device | str) -> None:
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r}; expected one of {AUGMENTATIONS}")
        self.device = torch.device(device)
        authors = name == "autoaugment_cutout"
        self.crops = name != "none"
        colour = fill_colour(mean)
        self.pad_fill = torch.tensor(colour, dtype=torch.uint8, device=self.device) if authors else None
        self.autoaugment = AutoAugment(image_hw, colour, self.device) if authors else None
        self.cutout_fill = torch.tensor(mean, dtype=torch.float32, device=self.device) if authors else None

    def pixels(self, images: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor | None,
               flip: torch.Tensor | None, codes: torch.Tensor | None) -> torch.Tensor:
        """uint8 (B, H, W, 3): ``images[rows]`` cropped, flipped and AutoAugmented as planned."""
        x = crop_flip(images, rows, shift, flip, self.pad_fill) if self.crops else images[rows]
        return x if self.autoaugment is None else self.autoaugment(x, codes)

    def model_input(self, pixels: torch.Tensor, channels_last: bool, cutout: torch.Tensor | None) -> torch.Tensor:
        """The batch as the model takes it, with the planned Cutout squares (None: no Cutout)."""
        return to_model_input(pixels, channels_last, cutout, self.cutout_fill)


# ---- crop, flip, cutout, model input --------------------------------------------------------


def crop_flip(images: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor,
              fill: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop from a ``PAD``-pixel padding plus horizontal flip, as one gather.

    ``images`` uint8 (N, H, W, 3); ``rows`` (B,) which images; ``shift`` (B, 2) = (dy, dx) in
    [0, 2*PAD]; ``flip`` (B,) 0/1; ``fill`` uint8 (3,) padding colour, None for zeros. Output pixel
    (i, j) of sample b comes from image rows[b] at row i + dy - PAD and column j' + dx - PAD, where
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
    if fill is None:
        return x * inside[..., None].to(x.dtype)  # (B, H, W, 3), padding pixels zeroed
    return torch.where(inside[..., None], x, fill)


def to_model_input(images: torch.Tensor, channels_last: bool, cutout: torch.Tensor | None = None,
                   cutout_fill: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], channels_last memory if asked.

    ``cutout``: int64 (B, 2) centres (cy, cx) on ``images``' device, or None. Each image gets rows
    [cy - 8, cy + 8) and columns [cx - 8, cx + 8), clipped at the border, set to ``cutout_fill``
    (float32 (3,), in [0, 1]; None: zeros): the centre is anywhere on the image, so the square may
    lie partly outside it (as in the paper and the authors' code).
    """
    # NHWC uint8 viewed as NCHW is channels_last already; .float() keeps the strides.
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if cutout is not None:
        square = _cutout_squares(cutout, images.shape[1], images.shape[2])[:, None]  # (B, 1, H, W)
        fill = torch.zeros(3, device=x.device) if cutout_fill is None else cutout_fill
        x = torch.where(square, fill[None, :, None, None], x)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _cutout_squares(centres: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool (B, H, W): True inside each image's square, which starts CUTOUT_SIZE // 2 before its centre."""
    start = centres - CUTOUT_SIZE // 2  # (B, 2)
    rows = torch.arange(height, device=centres.device) - start[:, :1]  # (B, H): offset into the square
    cols = torch.arange(width, device=centres.device) - start[:, 1:]  # (B, W)
    in_rows = (rows >= 0) & (rows < CUTOUT_SIZE)
    in_cols = (cols >= 0) & (cols < CUTOUT_SIZE)
    return in_rows[:, :, None] & in_cols[:, None, :]


# ---- AutoAugment ----------------------------------------------------------------------------


class AutoAugment:
    """The CIFAR-10 policy on uint8 (B, H, W, 3) images of one size, with its tables on ``device``.

    ``autoaugment(images, codes)``: ``codes`` int64 (B, STAGES) on the images' device, the plan's
    ``BatchPlan.autoaugment``. ``fill``: the uint8 colour shear and translate fill with.
    ``operations[k - 1]``: (name, magnitude bin, sign) that code k stands for; by default the
    policy's (``plan.decode_autoaugment``); code 0 does nothing.
    """

    def __init__(self, image_hw: tuple[int, int], fill: tuple[int, int, int], device: torch.device | str,
                 operations: Sequence[tuple[str, int, int]] | None = None) -> None:
        height, width = self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.device = torch.device(device)
        if operations is None:
            operations = [decode_autoaugment(code) for code in range(1, NUM_AUTOAUGMENT_CODES)]
        num_codes = 1 + len(operations)
        geometries: dict[tuple[str, float], int] = {}
        taps, fractions, fills = ([table] for table in _identity_geometry(height, width))  # row 0: identity
        family = np.zeros(num_codes, np.int64)  # per code: _NONE, _BICUBIC, ...
        geometry = np.zeros(num_codes, np.int64)  # per code: row of the geometry tables
        point_table = np.tile(np.arange(256, dtype=np.uint8), (num_codes, 1))
        enhance_factor = np.ones(num_codes, np.float32)  # 1: the image itself
        for code, (name, magnitude_bin, sign) in enumerate(operations, start=1):
            m = signed_magnitude(name, magnitude_bin, sign)
            family[code] = _FAMILY[name]
            if name in GEOMETRIC:
                if (name, m) not in geometries:
                    geometries[(name, m)] = len(taps)
                    for table, part in zip((taps, fractions, fills), _geometry(name, m, height, width)):
                        table.append(part)
                geometry[code] = geometries[(name, m)]
            elif name in ("invert", "solarize", "posterize"):
                point_table[code] = _point_table(name, m)
            elif name in ENHANCE:
                enhance_factor[code] = np.float32(1.0 + m)  # PIL passes the factor to ImagingBlend as a C float

        def put(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

        self.family = put(family)
        self.family_on_host = family
        self.geometry = put(geometry)
        self.taps = put(np.stack(taps))  # (G, H*W*4) flat source pixels, 4 taps along one axis
        self.fractions = put(np.stack(fractions))  # (G, H*W) float64 bicubic offsets (0: the second tap)
        self.fill_kind = put(np.stack(fills))  # (G, H*W) _KEEP / _FILL / _ROTATE_FILL
        self.fills = put(np.array([[0, 0, 0], fill, [ROTATE_FILL] * 3], np.uint8))
        self.point_table = put(point_table)
        self.enhance_factor = put(enhance_factor)

    def __call__(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu":
            return self.by_family(images, codes)
        return self.whole_batch(images, codes)

    def whole_batch(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Three passes per stage over every sample, each an identity for the samples that draw
        another kind of operation (nearest is bicubic with offset 0): no host synchronization."""
        for stage in range(STAGES):
            code = codes[:, stage]
            family = self.family[code]
            images = self._bicubic(images, code)
            histogram = _histograms(images)
            table_family = family[:, None, None]
            table = torch.where(table_family == _AUTOCONTRAST, _autocontrast_tables(histogram),
                                torch.where(table_family == _EQUALIZE, _equalize_tables(histogram),
                                            self.point_table[code][:, None, :].long()))
            images = _lookup(images, table)
            grey = _luminance(images)
            family = family[:, None, None, None]
            degenerate = torch.where(family == _SHARPNESS, _smoothed(images),
                                     torch.where(family == _COLOR, grey[..., None].float(),
                                                 torch.where(family == _CONTRAST, _mean(grey), 0.0)))
            images = _blend(degenerate, images, self.enhance_factor[code])
        return images

    def by_family(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Each operation family on its samples only (the codes are read on the host: CPU tensors)."""
        families = self.family_on_host[codes.cpu().numpy()]  # (B, STAGES)
        images = images.clone()
        for stage in range(STAGES):
            for family, apply in self._family_passes.items():
                rows = np.flatnonzero(families[:, stage] == family)
                if len(rows):
                    rows = torch.from_numpy(rows).to(images.device)
                    images[rows] = apply(self, images[rows], codes[rows, stage])
        return images

    def _bicubic(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Shear (bicubic along its axis) and, with offset 0, translate, rotate and identity."""
        b, h, w, c = images.shape
        g = self.geometry[code]
        taps = self.taps[g]  # (B, H*W*4)
        values = torch.gather(images.reshape(b, h * w, c), 1, taps[..., None].expand(b, h * w * 4, c))
        v1, v2, v3, v4 = values.view(b, h * w, 4, c).double().unbind(2)
        d = self.fractions[g][..., None]  # (B, H*W, 1)
        # PIL's BICUBIC macro (Geometry.c), term by term in its order: float64 as there.
        p2 = -v1 + v3
        p3 = 2 * (v1 - v2) + v3 - v4
        p4 = -v1 + v2 - v3 + v4
        out = (v2 + d * (p2 + d * (p3 + d * p4))).clamp_(0, 255).floor_().to(torch.uint8)
        return self._filled(out, g).view(b, h, w, c)

    def _nearest(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Translate and rotate: the second tap of each pixel, as bicubic with offset 0 gives it."""
        b, h, w, c = images.shape
        g = self.geometry[code]
        source = self.taps[g][:, 1::4]  # (B, H*W)
        out = torch.gather(images.reshape(b, h * w, c), 1, source[..., None].expand(b, h * w, c))
        return self._filled(out, g).view(b, h, w, c)

    def _filled(self, pixels: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        fill_kind = self.fill_kind[g]  # (B, H*W)
        return torch.where(fill_kind[..., None] > _KEEP, self.fills[fill_kind], pixels)

    def _fixed_table(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return _lookup(images, self.point_table[code][:, None, :].long())

    def _autocontrast(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return _lookup(images, _autocontrast_tables(_histograms(images)))

    def _equalize(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return _lookup(images, _equalize_tables(_histograms(images)))

    def _brightness(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return _blend(torch.zeros((), device=images.device), images, self.enhance_factor[code])

    def _contrast(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return _blend(_mean(_luminance(images)), images, self.enhance_factor[code])

    def _color(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return _blend(_luminance(images)[..., None].float(), images, self.enhance_factor[code])

    def _sharpness(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return _blend(_smoothed(images), images, self.enhance_factor[code])

    _family_passes = {}  # filled below the class: family -> method


# Operation families: the passes of ``AutoAugment.by_family``; ``whole_batch`` runs them all at once.
_NONE, _BICUBIC, _NEAREST, _TABLE, _AUTOCONTRAST, _EQUALIZE, _BRIGHTNESS, _CONTRAST, _COLOR, _SHARPNESS = range(10)
_FAMILY = {"shearX": _BICUBIC, "shearY": _BICUBIC, "translateX": _NEAREST, "translateY": _NEAREST,
           "rotate": _NEAREST, "invert": _TABLE, "solarize": _TABLE, "posterize": _TABLE,
           "autocontrast": _AUTOCONTRAST, "equalize": _EQUALIZE, "brightness": _BRIGHTNESS,
           "contrast": _CONTRAST, "color": _COLOR, "sharpness": _SHARPNESS}
AutoAugment._family_passes = {
    _BICUBIC: AutoAugment._bicubic, _NEAREST: AutoAugment._nearest, _TABLE: AutoAugment._fixed_table,
    _AUTOCONTRAST: AutoAugment._autocontrast, _EQUALIZE: AutoAugment._equalize,
    _BRIGHTNESS: AutoAugment._brightness, _CONTRAST: AutoAugment._contrast, _COLOR: AutoAugment._color,
    _SHARPNESS: AutoAugment._sharpness,
}


def _histograms(images: torch.Tensor) -> torch.Tensor:
    """int64 (B, 3, 256): per image and channel, how many pixels have each value."""
    b, h, w, c = images.shape
    pixels = images.reshape(b, h * w * c).long() + torch.arange(c, device=images.device).repeat(h * w) * 256
    histogram = torch.zeros(b, c * 256, dtype=torch.int64, device=images.device)
    return histogram.scatter_add_(1, pixels, torch.ones_like(pixels)).view(b, c, 256)


def _lookup(images: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Per image and channel lookup: ``tables`` int64 (B, 3 or 1, 256)."""
    b, h, w, c = images.shape
    tables = tables.expand(b, c, 256).reshape(b, c * 256)
    pixels = images.reshape(b, h * w * c).long() + torch.arange(c, device=images.device).repeat(h * w) * 256
    return torch.gather(tables, 1, pixels).to(torch.uint8).view(b, h, w, c)


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImagingBlend(degenerate, image, factor): in1 + alpha * (in2 - in1) in C floats, clipped,
    truncated. ``factor`` float32 (B,); ``degenerate`` float32, broadcast to the images."""
    x = images.float()
    factor = factor[:, None, None, None]
    return (degenerate + factor * (x - degenerate)).clamp_(0, 255).floor_().to(torch.uint8)


def _mean(grey: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast's grey level: int(mean + 0.5) of the L image (ImageStat), float32 (B, 1, 1, 1)."""
    count = grey.shape[1] * grey.shape[2]
    return torch.floor(grey.sum((1, 2)).double() / count + 0.5).float()[:, None, None, None]


def _luminance(images: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, exact in integers."""
    rgb = images.long()
    return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


def _smoothed(images: torch.Tensor) -> torch.Tensor:
    """PIL's ``filter(SMOOTH)`` as float32 (3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13), border pixels kept.

    Filter.c's 3x3 loop in its order: a +0.5 rounding offset, then the row below, the row itself
    and the row above, each summed left to right with float32 weights; clipped and truncated.
    """
    x = images.float()
    edge, centre = np.float32(1) / np.float32(13), np.float32(5) / np.float32(13)

    def row(r: torch.Tensor, middle: np.float32) -> torch.Tensor:
        return r[:, :, :-2] * edge + r[:, :, 1:-1] * middle + r[:, :, 2:] * edge

    total = torch.full_like(x[:, 1:-1, 1:-1], 0.5)
    total = total + row(x[:, 2:], edge)
    total = total + row(x[:, 1:-1], centre)
    total = total + row(x[:, :-2], edge)
    out = x.clone()
    out[:, 1:-1, 1:-1] = total.clamp_(0, 255).floor_()
    return out


def _autocontrast_tables(histogram: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (no cutoff): per channel, int(i * scale + offset) clipped, with
    scale = 255 / (hi - lo), offset = -lo * scale in float64; identity when hi <= lo."""
    present = histogram > 0
    lo = present.long().argmax(-1, keepdim=True)  # first set bin
    hi = 255 - present.flip(-1).long().argmax(-1, keepdim=True)  # last set bin
    spread = hi > lo
    scale = 255.0 / torch.where(spread, hi - lo, 1).double()
    offset = -lo.double() * scale
    i = torch.arange(256, device=histogram.device)
    table = torch.trunc(i.double() * scale + offset).clamp_(0, 255).long()
    return torch.where(spread, table, i)


def _equalize_tables(histogram: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize: step = (pixels - count of the last used value) // 255 and
    table[i] = (step // 2 + pixels below i) // step, clipped to 255 (Image.point does);
    identity when at most one value is used or step is 0. Integers throughout."""
    present = histogram > 0
    last = 255 - present.flip(-1).long().argmax(-1, keepdim=True)
    step = (histogram.sum(-1, keepdim=True) - histogram.gather(-1, last)) // 255
    below = histogram.cumsum(-1) - histogram
    usable = (present.sum(-1, keepdim=True) > 1) & (step > 0)
    table = ((step // 2 + below) // torch.where(usable, step, 1)).clamp_(max=255)
    return torch.where(usable, table, torch.arange(256, device=histogram.device))


def _point_table(name: str, m: float) -> np.ndarray:
    """The lookup table of invert, solarize (threshold m) or posterize (m bits kept)."""
    i = np.arange(256)
    if name == "invert":
        table = 255 - i
    elif name == "solarize":
        table = np.where(i < m, i, 255 - i)
    else:
        table = i & ~(2 ** (8 - int(m)) - 1)
    return table.astype(np.uint8)


# ---- the geometric operations' source pixels, as PIL computes them -------------------------


def _identity_geometry(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pixels = np.arange(height * width)
    return np.repeat(pixels, 4), np.zeros(height * width), np.zeros(height * width, np.int64)


def _geometry(name: str, m: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(taps (H*W*4,), fractions (H*W,), fill kinds (H*W,)) of one geometric operation.

    Output pixel p is ``bicubic(image[taps[4p:4p+4]], fractions[p])``, or a fill: with fraction 0
    that is the second tap itself, which is how nearest-neighbour operations are written.
    """
    if name in ("shearX", "shearY"):
        return _shear(m, height, width, along_x=name == "shearX")
    if name in ("translateX", "translateY"):
        source, inside = _translate(m, height, width, along_x=name == "translateX")
        fill = _FILL
    else:
        source, inside = _rotate(m, height, width)
        fill = _ROTATE_FILL
    source = np.where(inside, source, 0)
    return np.repeat(source.ravel(), 4), np.zeros(height * width), np.where(inside, _KEEP, fill).ravel()


def _shear(m: float, height: int, width: int, along_x: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL ``transform(AFFINE, (1, m, 0, 0, 1, 0) or (1, 0, 0, m, 1, 0), BICUBIC, fillcolor)``.

    The generic transform maps pixel centres, (x + .5, y + .5), to a0*x + a1*y + a2 and
    a3*x + a4*y + a5; a source outside [0, W) x [0, H) is fill; otherwise the 4x4 bicubic taps
    start one pixel before floor(source - .5), clamped to the image. Along the unsheared axis the
    offset is exactly 0, so the interpolation is one-dimensional along the sheared one.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    xc, yc = x + 0.5, y + 0.5
    a = affine_matrix("shearX" if along_x else "shearY", m, height, width)
    sx = a[0] * xc + a[1] * yc + a[2]
    sy = a[3] * xc + a[4] * yc + a[5]
    inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
    s, size = (sx, width) if along_x else (sy, height)
    start = np.floor(s - 0.5)
    fraction = (s - 0.5) - start
    taps = np.clip(start[..., None].astype(np.int64) + np.arange(-1, 3), 0, size - 1)  # (H, W, 4)
    if along_x:
        taps = y.astype(np.int64)[..., None] * width + taps
    else:
        taps = taps * width + x.astype(np.int64)[..., None]
    return taps.ravel(), np.where(inside, fraction, 0).ravel(), np.where(inside, _KEEP, _FILL).ravel()


def _translate(m: float, height: int, width: int, along_x: bool) -> tuple[np.ndarray, np.ndarray]:
    """PIL ``transform(AFFINE, (1, 0, m*W, 0, 1, 0) or (1, 0, 0, 0, 1, m*H))``, nearest.

    A pure translation takes ImagingScaleAffine: the source coordinate starts at offset + 0.5 and
    grows by 1.0 per pixel (accumulated in doubles, as here), truncated; outside is fill.
    """
    a = affine_matrix("translateX" if along_x else "translateY", m, height, width)
    offset, size = (a[2], width) if along_x else (a[5], height)
    shifted, position = [], offset + 0.5
    for _ in range(size):
        shifted.append(-1 if position < 0 else int(position))
        position += 1.0
    shifted = np.array(shifted)
    y, x = np.mgrid[0:height, 0:width]
    if along_x:
        sx, sy = shifted[x], y
    else:
        sx, sy = x, shifted[y]
    inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
    return sy * width + sx, inside


def _rotate(degrees: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL ``convert("RGBA").rotate(degrees)`` (nearest, about the centre), then composited on grey.

    A nearest affine transform that is no pure scaling runs in 16.16 fixed point (affine_fixed in
    Geometry.c), where integer accumulation is exact, so the source pixel of (x, y) is
    ((a2 + x*a0 + y*a1) >> 16, (a5 + x*a3 + y*a4) >> 16).
    """
    a = affine_matrix("rotate", degrees, height, width)

    def fixed(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    a0, a1, a3, a4 = fixed(a[0]), fixed(a[1]), fixed(a[3]), fixed(a[4])
    a2 = fixed(a[2] + a[0] * 0.5 + a[1] * 0.5)
    a5 = fixed(a[5] + a[3] * 0.5 + a[4] * 0.5)
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    sx = (a2 + x * a0 + y * a1) >> 16
    sy = (a5 + x * a3 + y * a4) >> 16
    inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
    return sy * width + sx, inside


def affine_matrix(name: str, m: float, height: int, width: int) -> tuple[float, ...]:
    """The (a0 .. a5) PIL's reference passes to ``Image.transform(AFFINE)``: the output pixel centre
    (x + .5, y + .5) samples the input at (a0*x + a1*y + a2, a3*x + a4*y + a5).

    Rotate: the matrix ``Image.rotate`` builds (about the centre, cos/sin rounded to 15 digits).
    """
    if name == "shearX":
        return (1.0, m, 0.0, 0.0, 1.0, 0.0)
    if name == "shearY":
        return (1.0, 0.0, 0.0, m, 1.0, 0.0)
    if name == "translateX":
        return (1.0, 0.0, m * width, 0.0, 1.0, 0.0)  # the reference multiplies by img.size[0]
    if name == "translateY":
        return (1.0, 0.0, 0.0, 0.0, 1.0, m * height)
    angle = -math.radians(m % 360.0)
    cx, cy = width / 2, height / 2
    a = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
         round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
    a[2] = a[0] * -cx + a[1] * -cy + a[2] + cx
    a[5] = a[3] * -cx + a[4] * -cy + a[5] + cy
    return tuple(a)


def policy_operations() -> tuple[str, ...]:
    """Every operation the policy uses, once, in first-use order."""
    names = [stage[0] for sub in CIFAR10_POLICY for stage in sub]
    return tuple(dict.fromkeys(names))
