"""Tests of ratio_fast.data.autoaugment: every AutoAugment operation against the PIL reference
implementation the authors train with (Pillow's ``ImageOps``/``ImageEnhance``/affine ``transform``).

Each operation is compared with Pillow on random uint8 images for every magnitude bin and sign.
Where an operation is a lookup table, the table itself is compared for every one of the 256
input levels, exhaustively over what it depends on: autocontrast's for each of the 32,896
(lo, hi) histogram ranges (32,640 with lo < hi, and the identities), equalize's for every pair of
used levels (with counts that reach every step size a 32x32 channel has) and for random
histograms, posterize's, solarize's and invert's at every magnitude, and the blend of
brightness, contrast and color for every grey level of the "degenerate" image at every magnitude.
PIL gives its whole table when its histogram comes from a mask (``autocontrast`` and
``equalize`` take one): the masked pixels make the histogram, and an unmasked ramp of all 256
levels shows the table applied.

The tolerance is zero: the torch operations repeat Pillow's arithmetic (integer lookup tables,
float32 blends, float64 bicubic taps, 16.16 fixed-point rotation) in its order, so any
difference is a bug. (Pillow built for a machine whose compiler fuses multiply-adds, e.g.
aarch64, rounds its float blends differently; these tests pin the x86-64 wheels.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from ratio_fast.data.augment import fill_colour
from ratio_fast.data.autoaugment import (MAGNITUDES, NUM_AUTOAUGMENT_CODES, STAGES, AutoAugment, autocontrast_tables,
                                         blend, equalize_tables, luminance, signed_magnitude)
from ratio_fast.data.autoaugment_geometry import affine_matrix
from ratio_fast.datasets import CIFAR10

FILL = fill_colour(CIFAR10.mean)


def reference_operation(image: Image.Image, name: str, m: float) -> Image.Image:
    """One operation as the PIL reference implementation applies it (m signed where it draws a sign)."""
    if name in ("shearX", "shearY", "translateX", "translateY"):
        resample = Image.BICUBIC if name.startswith("shear") else Image.NEAREST
        return image.transform(image.size, Image.AFFINE, affine_matrix(name, m, 32, 32), resample, fillcolor=FILL)
    if name == "rotate":  # through RGBA, composited on grey 128 (the reference's rotate_with_fill)
        rotated = image.convert("RGBA").rotate(m)
        return Image.composite(rotated, Image.new("RGBA", rotated.size, (128,) * 4), rotated).convert(image.mode)
    enhance = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
               "sharpness": ImageEnhance.Sharpness, "brightness": ImageEnhance.Brightness}
    if name in enhance:
        return enhance[name](image).enhance(1 + m)
    if name == "posterize":
        return ImageOps.posterize(image, int(m))
    if name == "solarize":
        return ImageOps.solarize(image, m)
    point = {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize, "invert": ImageOps.invert}
    return point[name](image)


def images_with_edge_cases(n: int = 32) -> np.ndarray:
    """Random images, plus the cases histogram operations branch on: low contrast, one colour,
    two colours, one bright pixel on black."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[10:18] = x[10:18] // 8 + 120
    x[18:21] = 77
    x[21:24] = np.where(rng.random((3, 32, 32, 1)) < 0.5, 10, 200)
    x[24:26] = 0
    x[24:26, 3, 5] = 255
    return x



@pytest.mark.parametrize("name", sorted(MAGNITUDES))
def test_every_operation_and_magnitude_equals_pil(name):
    images = images_with_edge_cases()
    operations = [(name, magnitude_bin, sign) for magnitude_bin in range(len(MAGNITUDES[name])) for sign in (1, -1)]
    augment = AutoAugment((32, 32), FILL, "cpu", operations)
    for code, (_, magnitude_bin, sign) in enumerate(operations, start=1):
        codes = torch.tensor([[code, 0]] * len(images))
        ours = augment(torch.from_numpy(images), codes).numpy()
        m = signed_magnitude(name, magnitude_bin, sign)
        theirs = np.stack([np.asarray(reference_operation(Image.fromarray(im), name, m)) for im in images])
        differ = np.flatnonzero((ours != theirs).any(axis=(1, 2, 3)))
        assert len(differ) == 0, f"{name} bin {magnitude_bin} sign {sign}: images {differ.tolist()} differ"


def test_whole_batch_and_per_family_passes_agree():
    """CUDA runs every pass over the whole batch (no host sync), CPU only over the samples that
    need it: the same bits, for every code of the policy in both stages."""
    augment = AutoAugment((32, 32), FILL, "cpu")
    n = 2 * (NUM_AUTOAUGMENT_CODES - 1)
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    codes = torch.zeros(n, STAGES, dtype=torch.long)
    every = torch.arange(1, NUM_AUTOAUGMENT_CODES)
    codes[: n // 2, 0] = every
    codes[n // 2:, 1] = every
    codes[::3, 1] = every.roll(7)[: len(codes[::3])]  # and pairs of operations
    assert torch.equal(augment.whole_batch(images, codes), augment.by_family(images, codes))


# ---- lookup tables, exhaustively --------------------------------------------------------------

LEVELS = np.arange(256)


def every_code(name: str) -> list[tuple[str, int, int]]:
    """(name, magnitude bin, sign) for every bin and both signs: AutoAugment's ``operations``."""
    return [(name, magnitude_bin, sign) for magnitude_bin in range(len(MAGNITUDES[name])) for sign in (1, -1)]


def pil_tables(operation, masked: np.ndarray) -> np.ndarray:
    """PIL's lookup tables, (T, 256), of a histogram operation for T histograms, three per call
    (one per channel). ``masked`` uint8 (T, n): the pixel values each histogram counts."""
    tables, n = [], masked.shape[1]
    ramp = np.repeat(LEVELS.astype(np.uint8)[:, None], 3, axis=1)  # (256, 3): every level in every channel
    mask = Image.fromarray(np.concatenate([np.zeros(256, np.uint8), np.full(n, 255, np.uint8)])[None])
    for first in range(0, len(masked), 3):
        channels = masked[first:first + 3]
        padded = np.concatenate([channels, np.repeat(channels[-1:], 3 - len(channels), axis=0)])
        image = np.concatenate([ramp, padded.T])[None]  # (1, 256 + n, 3)
        applied = np.asarray(operation(Image.fromarray(image), mask=mask))[0, :256]  # (256, 3)
        tables.extend(applied.T[:len(channels)])
    return np.stack(tables)


def histograms_of(masked: np.ndarray) -> torch.Tensor:
    """int64 (T, 1, 256): the histograms of ``masked`` (T, n), one channel each."""
    counts = np.stack([np.bincount(row, minlength=256) for row in masked])
    return torch.from_numpy(counts)[:, None, :]


def test_autocontrast_equals_pil_for_every_range():
    """All 32,896 (lo, hi) with lo <= hi: the table depends on nothing else (no cutoff)."""
    pairs = np.array([(lo, hi) for lo in range(256) for hi in range(lo, 256)], np.uint8)
    assert len(pairs) == 32_640 + 256
    ours = autocontrast_tables(histograms_of(pairs))[:, 0].numpy()
    theirs = pil_tables(ImageOps.autocontrast, pairs)
    differ = pairs[(ours != theirs).any(axis=1)]
    assert len(differ) == 0, f"{len(differ)} (lo, hi) tables differ, e.g. {differ[:5].tolist()}"


def test_equalize_equals_pil_for_every_pair_of_levels_and_random_histograms():
    """A 32x32 channel (1,024 pixels): every pair of used levels lo < hi, split k : 1024 - k with k
    running through 1..1023 (so steps 0..4 and every rounding occur), every single level, and
    random histograms of 2 to 256 used levels."""
    n = 1024
    pairs = [(lo, hi) for lo in range(256) for hi in range(lo + 1, 256)]
    masked = np.empty((len(pairs) + 256 + 600, n), np.uint8)
    for t, (lo, hi) in enumerate(pairs):
        k = 1 + (t * 37) % (n - 1)
        masked[t, :k], masked[t, k:] = lo, hi
    masked[len(pairs):len(pairs) + 256] = LEVELS[:, None]
    rng = np.random.default_rng(0)
    for row in masked[len(pairs) + 256:]:
        used = rng.choice(256, size=rng.integers(2, 257), replace=False)
        row[:] = rng.choice(used, size=n, p=rng.dirichlet(np.full(len(used), rng.choice([0.1, 1.0, 10.0]))))
    ours = equalize_tables(histograms_of(masked))[:, 0].numpy()
    theirs = pil_tables(ImageOps.equalize, masked)
    differ = np.flatnonzero((ours != theirs).any(axis=1))
    assert len(differ) == 0, f"{len(differ)} tables differ, e.g. histograms {differ[:5].tolist()}"
    steps = (n - np.array([np.bincount(row, minlength=256)[row.max()] for row in masked])) // 255
    assert set(steps.tolist()) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("name", ["posterize", "solarize", "invert"])
def test_fixed_tables_equal_pil_at_every_level_and_magnitude(name):
    """Images holding all 256 levels in every channel, through each code of the operation."""
    ramp = (LEVELS.reshape(16, 16)[..., None] + np.array([0, 85, 170])) % 256  # (16, 16, 3)
    image = torch.from_numpy(ramp.astype(np.uint8))[None]
    operations = every_code(name)
    augment = AutoAugment((16, 16), FILL, "cpu", operations)
    for code, (_, magnitude_bin, sign) in enumerate(operations, start=1):
        ours = augment(image, torch.tensor([[code, 0]]))[0].numpy()
        m = signed_magnitude(name, magnitude_bin, sign)
        theirs = np.asarray(reference_operation(Image.fromarray(ramp.astype(np.uint8)), name, m))
        assert np.array_equal(ours, theirs), f"{name} bin {magnitude_bin} sign {sign}"


@pytest.mark.parametrize("name", ["brightness", "contrast", "color"])
def test_enhance_blends_equal_pil_at_every_grey_level_and_magnitude(name):
    """ImageEnhance's ``enhance(factor)`` is ``Image.blend(degenerate, image, factor)``, with a grey
    degenerate image: black (brightness), the mean grey (contrast), each pixel's grey (color). So
    each is a table of (grey level, level): all 65,536 pairs, every channel, at every magnitude."""
    grey, level = np.meshgrid(LEVELS, LEVELS, indexing="ij")  # (256, 256): row = grey, column = level
    image = ((level[..., None] + np.array([0, 85, 170])) % 256).astype(np.uint8)  # every level, every channel
    degenerate = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    for _, magnitude_bin, sign in every_code(name):
        factor = 1 + signed_magnitude(name, magnitude_bin, sign)
        ours = blend(torch.from_numpy(degenerate).float()[None], torch.from_numpy(image)[None],
                     torch.tensor([factor], dtype=torch.float32))[0].numpy()
        theirs = np.asarray(Image.blend(Image.fromarray(degenerate), Image.fromarray(image), factor))
        assert np.array_equal(ours, theirs), f"{name} bin {magnitude_bin} sign {sign}"
    sample = Image.fromarray(image[::8, ::8])
    assert np.array_equal(np.asarray(ImageEnhance.Brightness(sample).enhance(0.3)),
                          np.asarray(Image.blend(Image.new("RGB", sample.size, 0), sample, 0.3)))


def test_grey_of_every_colour_equals_pil():
    """Color's degenerate image (and contrast's mean) comes from PIL's RGB -> L: all 2**24 colours."""
    rgb = np.ascontiguousarray(np.indices((256, 256, 256), dtype=np.uint8).reshape(3, -1).T)  # (2**24, 3)
    theirs = np.asarray(Image.fromarray(rgb.reshape(4096, 4096, 3)).convert("L")).ravel()
    for chunk in range(16):
        part = slice(chunk << 20, (chunk + 1) << 20)
        ours = luminance(torch.from_numpy(rgb[part])[None])[0].numpy()
        assert np.array_equal(ours, theirs[part]), f"colours {part}"
