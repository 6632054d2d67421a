"""Where AutoAugment's geometric operations sample, as PIL computes it: per output pixel, the source
pixels and the offset of the resampling filter, or a fill.

``AutoAugment`` (``autoaugment.py``) turns these maps into gathers. Shear runs PIL's generic
affine transform with its bicubic filter; translate takes PIL's pure-translation path and rotate
its 16.16 fixed-point path, both nearest neighbour. ``affine_matrix`` is the matrix the reference
passes to ``Image.transform``; the DALI loader warps with the same matrices. Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np

KEEP, FILL, GREY = 0, 1, 2  # what an output pixel holds: its source pixels, the fill colour, or rotate's grey


def source_pixels(name: str, m: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(taps (H*W*4,), fractions (H*W,), fill kinds (H*W,)) of one geometric operation, or "identity".

    Output pixel p is ``bicubic(image[taps[4p:4p+4]], fractions[p])``, or a fill: with fraction 0
    that is the second tap itself, which is how nearest-neighbour operations are written.
    """
    if name in ("shearX", "shearY"):
        return _shear(m, height, width, along_x=name == "shearX")
    if name in ("translateX", "translateY"):
        source, inside = _translate(m, height, width, along_x=name == "translateX")
        fill = FILL
    elif name == "rotate":
        source, inside = _rotate(m, height, width)
        fill = GREY
    elif name == "identity":
        source, inside, fill = np.arange(height * width), np.ones(height * width, bool), KEEP
    else:
        raise ValueError(f"not a geometric operation: {name!r}")
    source = np.where(inside, source, 0)
    return np.repeat(source.ravel(), 4), np.zeros(height * width), np.where(inside, KEEP, fill).ravel()


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
    return taps.ravel(), np.where(inside, fraction, 0).ravel(), np.where(inside, KEEP, FILL).ravel()


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
    sx, sy = (shifted[x], y) if along_x else (x, shifted[y])
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
