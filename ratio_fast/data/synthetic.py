"""A built-in, learnable, CIFAR-shaped data set that needs no download.

For smoke tests, CI and benchmarks: the whole RATIO pipeline runs on it in seconds and a
small CNN learns it, robustly, at the CIFAR-10 radius (L2 0.5 in [0,1] pixel space).

In-distribution (``make_synthetic``): each class has a fixed smooth colour template (a random
4x4x3 grid upsampled bilinearly, per-pixel amplitude about 0.2 around mid-grey). Templates
of different classes lie about 15 apart in L2, far beyond the attack radius. An image is its
class template shifted by up to 2 pixels, with random contrast, brightness and colour cast, a
weaker smooth per-image nuisance pattern and pixel noise, so that the task is not trivial.
The templates come from a constant base seed, the images from ``seed`` and the split, so the
train and test splits share templates and a model trained on one generalizes to the other.

Out-distribution (``make_synthetic_out``): unlabelled images with no class templates: smooth
random blobs at several scales, uniform noise, and mixtures of both.
"""

from __future__ import annotations

import numpy as np

from ratio_fast.datasets import IMAGE_HW

# Fixed forever: changing it changes every class template and so every synthetic result.
_TEMPLATE_SEED = 0x5A7105
# Separate random streams so the same user seed gives unrelated in- and out-distribution images.
_STREAM_IN, _STREAM_OUT = 1, 2
_SPLITS = {"train": 0, "test": 1}

_SIZE = IMAGE_HW[0]  # the side of the square images
_MAX_SHIFT = 2  # pixels, each way
_GRID = 4  # resolution of the template grid: low-frequency patterns
_TEMPLATE_AMPLITUDE = 0.2
_NUISANCE_AMPLITUDE = 0.06
_NOISE_STD = 0.04


def make_synthetic(n: int, num_classes: int = 10, seed: int = 0, *,
                   split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (n,32,32,3), labels int64 (n,)), deterministic in (seed, split).

    Labels are balanced (counts differ by at most one) and shuffled. Class k's template does
    not depend on ``num_classes``, so the first 10 classes of a 100-class set are the 10-class set.
    """
    if n < 0 or num_classes < 1:
        raise ValueError(f"need n >= 0 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    rng = np.random.default_rng([_STREAM_IN, _SPLITS[split], seed])
    templates = _class_templates(num_classes)  # (K, 36, 36, 3), zero-mean

    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    base = _shifted_crops(templates, labels, rng)  # (n, 32, 32, 3)

    f32 = np.float32  # float32 throughout: half the memory traffic of float64, same result in uint8
    contrast = rng.uniform(0.75, 1.25, size=(n, 1, 1, 1)).astype(f32)
    offset = (0.5 + rng.uniform(-0.08, 0.08, size=(n, 1, 1, 1))  # brightness
              + rng.uniform(-0.03, 0.03, size=(n, 1, 1, 3))).astype(f32)  # slight colour cast
    nuisance = _smooth_patterns(rng.uniform(-1, 1, size=(n, _GRID, _GRID, 3)), _SIZE)

    images = base
    images *= contrast
    images += offset
    images += _NUISANCE_AMPLITUDE * nuisance
    images += rng.standard_normal(size=base.shape, dtype=f32) * f32(_NOISE_STD)
    return _to_uint8(images), labels


def make_synthetic_out(n: int, seed: int = 0) -> np.ndarray:
    """Return unlabelled out-distribution images uint8 (n,32,32,3), deterministic in ``seed``.

    A third each (in shuffled order): smooth blobs (random grid of 2..8 cells, random mean
    and amplitude), uniform noise, and blobs plus noise. None uses the class templates.
    """
    if n < 0:
        raise ValueError(f"need n >= 0, got n={n}")
    rng = np.random.default_rng([_STREAM_OUT, seed])
    kind = rng.permutation(np.arange(n) % 3)
    images = np.empty((n, _SIZE, _SIZE, 3), dtype=np.float32)

    # Blobs, grouped by grid size so each group is one batched upsampling.
    grids = rng.integers(2, 9, size=n)
    for g in np.unique(grids):
        members = np.flatnonzero(grids == g)
        patterns = _smooth_patterns(rng.uniform(-1, 1, size=(len(members), g, g, 3)), _SIZE)
        amplitude = rng.uniform(0.1, 0.45, size=(len(members), 1, 1, 1))
        mean = rng.uniform(0.25, 0.75, size=(len(members), 1, 1, 3))
        images[members] = mean + amplitude * patterns
    noise = rng.random(size=images.shape, dtype=np.float32)
    images[kind == 1] = noise[kind == 1]
    images[kind == 2] = 0.5 * images[kind == 2] + 0.5 * noise[kind == 2]
    return _to_uint8(images)


# --- building blocks ----------------------------------------------------------------------


def _class_templates(num_classes: int) -> np.ndarray:
    """Zero-mean smooth templates (K, 36, 36, 3): 32 pixels plus room for the shifts.

    Class k comes from its own stream, so it is the same for every ``num_classes``.
    """
    size = _SIZE + 2 * _MAX_SHIFT
    grids = np.stack([np.random.default_rng([_TEMPLATE_SEED, k]).uniform(-1, 1, (_GRID, _GRID, 3))
                      for k in range(num_classes)])
    patterns = _smooth_patterns(grids, size)
    # Unit per-pixel RMS, then the chosen amplitude: every class is equally far from grey.
    rms = np.sqrt(np.mean(patterns ** 2, axis=(1, 2, 3), keepdims=True))
    return (_TEMPLATE_AMPLITUDE * patterns / rms).astype(np.float32)


def _shifted_crops(templates: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crop each label's template at a random offset in [0, 2*max_shift] per axis (batched)."""
    n = len(labels)
    shift = rng.integers(0, 2 * _MAX_SHIFT + 1, size=(n, 2))
    out = np.empty((n, _SIZE, _SIZE, templates.shape[-1]), dtype=templates.dtype)
    # One slice per distinct offset (25 of them) is much faster than a per-pixel gather.
    for dy in range(2 * _MAX_SHIFT + 1):
        for dx in range(2 * _MAX_SHIFT + 1):
            members = np.flatnonzero((shift[:, 0] == dy) & (shift[:, 1] == dx))
            out[members] = templates[labels[members], dy:dy + _SIZE, dx:dx + _SIZE]
    return out


def _smooth_patterns(grids: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly upsample (n, g, g, c) grids to (n, size, size, c): low-frequency patterns."""
    up = _bilinear_matrix(grids.shape[1], size).astype(np.float32)
    g = np.ascontiguousarray(grids.transpose(0, 3, 1, 2), dtype=np.float32)  # (n, c, g, g)
    return (up @ g @ up.T).transpose(0, 2, 3, 1)  # separable: rows, then columns


def _bilinear_matrix(g: int, size: int) -> np.ndarray:
    """(size, g) matrix mapping g samples to size samples by linear interpolation."""
    pos = np.linspace(0, g - 1, size)
    lo = np.minimum(np.floor(pos).astype(int), g - 2) if g > 1 else np.zeros(size, int)
    frac = pos - lo
    m = np.zeros((size, g))
    m[np.arange(size), lo] = 1 - frac
    if g > 1:
        m[np.arange(size), lo + 1] += frac
    return m


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """[0,1] floats to uint8 pixels (rounded, clipped); works in place on ``images``."""
    images *= 255.0
    np.clip(images, 0.0, 255.0, out=images)
    return np.rint(images, out=images).astype(np.uint8)
