"""Tests of ratio_fast.data.autoaugment: every AutoAugment operation against the PIL reference
implementation the authors train with (Pillow's ``ImageOps``/``ImageEnhance``/affine ``transform``).

Each operation is compared with Pillow on random uint8 images for every magnitude bin and sign.

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
from ratio_fast.data.autoaugment import MAGNITUDES, NUM_AUTOAUGMENT_CODES, STAGES, AutoAugment, signed_magnitude
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

