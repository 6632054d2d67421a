"""AutoAugment with the CIFAR-10 policy, bit for bit as the PIL implementation the authors train with.

The policy (Cubuk et al., CVPR 2019, appendix) is 25 sub-policies of two stages, each
(operation, probability, magnitude bin 0..9); ``MAGNITUDES`` maps the bins to values and
``SIGNED`` names the operations whose magnitude is negated at random. A drawn operation is one
integer code per sample and stage (``autoaugment_code``): the batch plan (``plan.py``) draws
them, ``AutoAugment`` here applies them on uint8 (B, H, W, 3) torch tensors, and the DALI loader
decodes the same codes into DALI's operators (``dali.py``).

``AutoAugment`` repeats Pillow's arithmetic (``ImageOps``, ``ImageEnhance`` and the affine
``transform``) in its order, so the result equals PIL's, which tests/test_data_autoaugment.py
checks for every operation and magnitude, and exhaustively for every lookup table. Each stage is
three batched passes, each an identity for the samples that draw another kind of operation:
one resampling for the geometric operations (shear: PIL's bicubic along the sheared axis, in
float64; translate and rotate: PIL's nearest neighbour; fills as in the reference; where each
pixel samples: ``autoaugment_geometry.py``), one
per-image lookup table for the point operations (invert, solarize, posterize, and autocontrast
and equalize from per-image histograms), one blend with a per-image "degenerate" image for the
enhance operations (brightness, contrast, color, sharpness; float32, as ImagingBlend). On CPU
tensors each pass runs on the samples that need it only (reading the codes is free there); on
CUDA every pass runs on the whole batch, so nothing waits for the host. Both give the same bits.
"""

from __future__ import annotations

import numpy as np
import torch

from ratio_fast.data.autoaugment_geometry import FILL, GREY, KEEP, source_pixels

# (operation, probability, magnitude bin) x 2 stages, in the form of the authors' PIL implementation.
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translateX", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shearY", 0.5, 8), ("translateY", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shearY", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translateX", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translateY", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translateY", 0.9, 9), ("translateY", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translateY", 0.7, 9), ("autocontrast", 0.9, 1)),
)
STAGES = 2

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
ROTATE_GREY = 128  # the reference rotates through RGBA and composites onto grey 128, not the fill colour


def autoaugment_code(sub_policy: np.ndarray, stage: int, negative: np.ndarray) -> np.ndarray:
    """The code of a fired operation: 1 + (sub_policy * STAGES + stage) * 2 + negative; 0: nothing.

    One integer per (sample, stage) names the operation, its magnitude bin and its sign, so a
    plan column is all a loader needs; ``decode_autoaugment`` inverts it.
    """
    return 1 + (np.asarray(sub_policy) * STAGES + stage) * 2 + np.asarray(negative)


def decode_autoaugment(code: int) -> tuple[str, int, int] | None:
    """(operation, magnitude bin, sign +1/-1) of a code, or None for 0 (no operation)."""
    if code == 0:
        return None
    sub_policy, rest = divmod(code - 1, 2 * STAGES)
    stage, negative = divmod(rest, 2)
    name, _probability, magnitude_bin = CIFAR10_POLICY[sub_policy][stage]
    return name, magnitude_bin, -1 if negative else 1


NUM_AUTOAUGMENT_CODES = 1 + len(CIFAR10_POLICY) * STAGES * 2
OPERATIONS = tuple(dict.fromkeys(stage[0] for sub in CIFAR10_POLICY for stage in sub))  # each once, first-use order


def signed_magnitude(name: str, magnitude_bin: int, sign: int) -> float:
    """The parameter of an operation at a bin, with the drawn sign where the reference draws one."""
    value = MAGNITUDES[name][magnitude_bin]
    return float(value) * (sign if name in SIGNED else 1)


# Operation families: ``AutoAugment.by_family`` runs each on its samples; ``whole_batch`` all at once.
_NONE, _BICUBIC, _NEAREST, _TABLE, _AUTOCONTRAST, _EQUALIZE, _BRIGHTNESS, _CONTRAST, _COLOR, _SHARPNESS = range(10)
_FAMILY = {"shearX": _BICUBIC, "shearY": _BICUBIC, "translateX": _NEAREST, "translateY": _NEAREST,
           "rotate": _NEAREST, "invert": _TABLE, "solarize": _TABLE, "posterize": _TABLE,
           "autocontrast": _AUTOCONTRAST, "equalize": _EQUALIZE, "brightness": _BRIGHTNESS,
           "contrast": _CONTRAST, "color": _COLOR, "sharpness": _SHARPNESS}


class AutoAugment:
    """The CIFAR-10 policy on uint8 (B, H, W, 3) images of one size, with its tables on ``device``.

    ``autoaugment(images, codes)``: ``codes`` int64 (B, STAGES) on the images' device, the plan's
    ``BatchPlan.autoaugment``. ``fill``: the uint8 colour shear and translate fill with.
    ``operations[k - 1]``: (name, magnitude bin, sign) that code k stands for; by default the
    policy's (``decode_autoaugment``); code 0 does nothing.
    """

    def __init__(self, image_hw: tuple[int, int], fill: tuple[int, int, int], device: torch.device | str,
                 operations: list[tuple[str, int, int]] | None = None) -> None:
        height, width = self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.device = torch.device(device)
        if operations is None:
            operations = [decode_autoaugment(code) for code in range(1, NUM_AUTOAUGMENT_CODES)]
        num_codes = 1 + len(operations)
        geometries: dict[tuple[str, float], int] = {}
        taps, fractions, fills = ([table] for table in source_pixels("identity", 0.0, height, width))  # row 0
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
                    for table, part in zip((taps, fractions, fills), source_pixels(name, m, height, width)):
                        table.append(part)
                geometry[code] = geometries[(name, m)]
            elif family[code] == _TABLE:
                point_table[code] = point_table_of(name, m)
            elif family[code] in (_BRIGHTNESS, _CONTRAST, _COLOR, _SHARPNESS):
                enhance_factor[code] = np.float32(1.0 + m)  # PIL passes the factor to ImagingBlend as a C float

        def put(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

        self.family = put(family)
        self.family_on_host = family
        self.geometry = put(geometry)
        self.taps = put(np.stack(taps))  # (G, H*W*4) flat source pixels, 4 taps along one axis
        self.fractions = put(np.stack(fractions))  # (G, H*W) float64 bicubic offsets (0: the second tap)
        self.fill_kind = put(np.stack(fills))  # (G, H*W) KEEP / FILL / GREY
        colours = np.zeros((3, 3), np.uint8)  # per fill kind
        colours[FILL], colours[GREY] = fill, ROTATE_GREY
        self.fills = put(colours)
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
            histogram = histograms(images)
            table_family = family[:, None, None]
            table = torch.where(table_family == _AUTOCONTRAST, autocontrast_tables(histogram),
                                torch.where(table_family == _EQUALIZE, equalize_tables(histogram),
                                            self.point_table[code][:, None, :].long()))
            images = lookup(images, table)
            grey = luminance(images)
            family = family[:, None, None, None]
            degenerate = torch.where(family == _SHARPNESS, smoothed(images),
                                     torch.where(family == _COLOR, grey[..., None].float(),
                                                 torch.where(family == _CONTRAST, contrast_grey(grey), 0.0)))
            images = blend(degenerate, images, self.enhance_factor[code])
        return images

    def by_family(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Each operation family on its samples only (the codes are read on the host: CPU tensors)."""
        families = self.family_on_host[codes.cpu().numpy()]  # (B, STAGES)
        images = images.clone()
        for stage in range(STAGES):
            for family in np.unique(families[:, stage]):
                if family != _NONE:
                    rows = torch.from_numpy(np.flatnonzero(families[:, stage] == family)).to(images.device)
                    images[rows] = self._one_family(family, images[rows], codes[rows, stage])
        return images

    def _one_family(self, family: int, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The operations of one family on the samples that drew them."""
        if family == _BICUBIC:
            return self._bicubic(x, code)
        if family == _NEAREST:
            return self._nearest(x, code)
        if family == _TABLE:
            return lookup(x, self.point_table[code][:, None, :].long())
        if family == _AUTOCONTRAST:
            return lookup(x, autocontrast_tables(histograms(x)))
        if family == _EQUALIZE:
            return lookup(x, equalize_tables(histograms(x)))
        if family == _BRIGHTNESS:
            degenerate = torch.zeros((), device=x.device)
        elif family == _CONTRAST:
            degenerate = contrast_grey(luminance(x))
        elif family == _COLOR:
            degenerate = luminance(x)[..., None].float()
        else:  # _SHARPNESS
            degenerate = smoothed(x)
        return blend(degenerate, x, self.enhance_factor[code])

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
        return torch.where(fill_kind[..., None] > KEEP, self.fills[fill_kind], pixels)


# ---- the point and enhance operations, in PIL's arithmetic -----------------------------------


def histograms(images: torch.Tensor) -> torch.Tensor:
    """int64 (B, 3, 256): per image and channel, how many pixels have each value."""
    b, h, w, c = images.shape
    pixels = images.reshape(b, h * w * c).long() + torch.arange(c, device=images.device).repeat(h * w) * 256
    histogram = torch.zeros(b, c * 256, dtype=torch.int64, device=images.device)
    return histogram.scatter_add_(1, pixels, torch.ones_like(pixels)).view(b, c, 256)


def lookup(images: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Per image and channel lookup: ``tables`` int64 (B, 3 or 1, 256)."""
    b, h, w, c = images.shape
    tables = tables.expand(b, c, 256).reshape(b, c * 256)
    pixels = images.reshape(b, h * w * c).long() + torch.arange(c, device=images.device).repeat(h * w) * 256
    return torch.gather(tables, 1, pixels).to(torch.uint8).view(b, h, w, c)


def point_table_of(name: str, m: float) -> np.ndarray:
    """The lookup table of invert, solarize (threshold m) or posterize (m bits kept)."""
    i = np.arange(256)
    if name == "invert":
        table = 255 - i
    elif name == "solarize":
        table = np.where(i < m, i, 255 - i)
    else:
        table = i & ~(2 ** (8 - int(m)) - 1)
    return table.astype(np.uint8)


def autocontrast_tables(histogram: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (no cutoff): per channel, int(i * scale + offset) clipped, with
    scale = 255 / (hi - lo), offset = -lo * scale in float64; identity when hi <= lo.

    The division is tensor by tensor: torch evaluates ``255.0 / tensor`` as a reciprocal times
    255, one rounding more than PIL's, which moves 3,511 of the 32,640 (lo, hi) tables a level up.
    """
    present = histogram > 0
    lo = present.long().argmax(-1, keepdim=True)  # first set bin
    hi = 255 - present.flip(-1).long().argmax(-1, keepdim=True)  # last set bin
    spread = hi > lo
    width = torch.where(spread, hi - lo, 1).double()
    scale = torch.full_like(width, 255.0) / width
    offset = -lo.double() * scale
    i = torch.arange(256, device=histogram.device)
    table = torch.trunc(i.double() * scale + offset).clamp_(0, 255).long()
    return torch.where(spread, table, i)


def equalize_tables(histogram: torch.Tensor) -> torch.Tensor:
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


def blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImagingBlend(degenerate, image, factor), which every ImageEnhance class runs: in1 + alpha *
    (in2 - in1) in C floats, clipped, truncated. ``factor`` float32 (B,); ``degenerate`` float32,
    broadcast to the images (brightness: 0; contrast: the grey mean; color: the grey image)."""
    x = images.float()
    factor = factor[:, None, None, None]
    return (degenerate + factor * (x - degenerate)).clamp_(0, 255).floor_().to(torch.uint8)


def contrast_grey(grey: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast's grey level: int(mean + 0.5) of the L image (ImageStat), float32 (B, 1, 1, 1)."""
    count = grey.shape[1] * grey.shape[2]
    return torch.floor(grey.sum((1, 2)).double() / count + 0.5).float()[:, None, None, None]


def luminance(images: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, exact in integers."""
    rgb = images.long()
    return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


def smoothed(images: torch.Tensor) -> torch.Tensor:
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
