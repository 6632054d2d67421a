"""The authors' augmentation (``--augment autoaugment_cutout``) against its PIL reference.

The authors train with a PIL pipeline (torchvision RandomCrop with a mean-colour fill, horizontal
flip, the PIL-based AutoAugment CIFAR-10 policy, Cutout on the float tensor). Each operation of
ours is compared with Pillow on random uint8 images for every magnitude bin and sign, and the
whole chain with a PIL re-enactment of the reference given the same plan. The tolerance is
zero: the torch operations repeat Pillow's arithmetic (integer lookup tables, float32 blends,
float64 bicubic taps, 16.16 fixed-point rotation) in its order, so any difference is a bug.
(Pillow built for a machine whose compiler fuses multiply-adds, e.g. aarch64, rounds its float
blends differently; these tests pin the x86-64 wheels.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from ratio_fast.data import BatchSpec, make_loader
from ratio_fast.data.augment import MAGNITUDES, AutoAugment, Augmenter, affine_matrix, fill_colour, signed_magnitude
from ratio_fast.data.plan import (CIFAR10_POLICY, NUM_AUTOAUGMENT_CODES, PAD, STAGES, autoaugment_code,
                                  decode_autoaugment, plan_epoch)
from ratio_fast.models import CIFAR10_MEAN

FILL = fill_colour(CIFAR10_MEAN)


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


def test_the_authors_chain_equals_a_pil_reenactment_of_the_plan():
    """Crop from a mean-colour padding, flip, two policy stages, Cutout: whole batches, bit for bit."""
    n = 64
    images = np.random.default_rng(2).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    spec = BatchSpec(32, seed=3, augment="autoaugment_cutout", mean=CIFAR10_MEAN)
    loader = make_loader("gpu", images, None, spec, "cpu")
    for index in range(2):
        plan = loader.plan(1, index)
        xb, _ = loader.batch(1, index)
        for b in range(len(plan)):
            padded = Image.new("RGB", (32 + 2 * PAD, 32 + 2 * PAD), FILL)
            padded.paste(Image.fromarray(images[plan.indices[b]]), (PAD, PAD))
            dy, dx = plan.shift[b]
            image = padded.crop((dx, dy, dx + 32, dy + 32))
            if plan.flip[b]:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            for code in plan.autoaugment[b]:
                if code:
                    name, magnitude_bin, sign = decode_autoaugment(int(code))
                    image = reference_operation(image, name, signed_magnitude(name, magnitude_bin, sign))
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # ToTensor
            cy, cx = plan.cutout[b]
            mask = torch.ones(32, 32)
            mask[max(cy - 8, 0):cy + 8, max(cx - 8, 0):cx + 8] = 0  # the Cutout transform
            x = x * mask + (1 - mask) * torch.tensor(CIFAR10_MEAN, dtype=torch.float32)[:, None, None]
            assert torch.equal(xb[b], x), f"batch {index}, sample {b}"


def test_plan_draws_follow_the_policy():
    """Sub-policies uniform, each stage fires with its probability, signs half and half."""
    plan = plan_epoch(5, 2, 200_000, shuffle=True, draws=BatchSpec(1).draws)
    codes = plan.autoaugment
    assert codes.shape == (200_000, STAGES) and codes.min() >= 0 and codes.max() < NUM_AUTOAUGMENT_CODES
    for stage in range(STAGES):
        fired = codes[:, stage] > 0
        decoded = [decode_autoaugment(int(c)) for c in codes[fired, stage][:20_000]]
        negative = np.mean([sign < 0 for _, _, sign in decoded])
        assert abs(negative - 0.5) < 0.02
        sub_policy = (codes[fired, stage] - 1) // (2 * STAGES)
        assert np.all((codes[fired, stage] - 1) // 2 % STAGES == stage)
        probabilities = np.array([sub[stage][1] for sub in CIFAR10_POLICY])
        counts = np.bincount(sub_policy, minlength=len(CIFAR10_POLICY))
        expected = probabilities * len(codes) / len(CIFAR10_POLICY)
        assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected) + 1), (stage, counts, expected)
    # The two stages of a sample come from the same sub-policy.
    both = (codes[:, 0] > 0) & (codes[:, 1] > 0)
    assert np.array_equal((codes[both, 0] - 1) // 4, (codes[both, 1] - 1) // 4)
    assert autoaugment_code(np.array([24]), 1, np.array([1]))[0] == NUM_AUTOAUGMENT_CODES - 1


def test_padding_and_cutout_fill_with_the_mean_colour():
    """autoaugment_cutout pads and cuts out with the data set's mean; crop_flip pads with zeros."""
    images = torch.full((1, 32, 32, 3), 255, dtype=torch.uint8)
    mean = (0.5, 0.25, 0.125)
    rows, shift, flip = torch.zeros(1, dtype=torch.long), torch.tensor([[0, 0]]), torch.tensor([0])
    authors = Augmenter("autoaugment_cutout", mean, (32, 32), "cpu")
    codes = torch.zeros(1, STAGES, dtype=torch.long)
    x = authors.pixels(images, rows, shift, flip, codes)  # shifted by (-4, -4): top and left are padding
    assert x[0, :4, :, :].tolist() == [[list(fill_colour(mean))] * 32] * 4 and (x[0, 4:, 4:] == 255).all()
    assert fill_colour(CIFAR10_MEAN) == (125, 122, 113)  # int(255 * mean), truncated as the authors write it
    model_input = authors.model_input(x, False, torch.tensor([[20, 20]]))
    assert torch.equal(model_input[0, :, 12:28, 12:28], torch.tensor(mean)[:, None, None].expand(3, 16, 16))
    assert (model_input[0, :, 28:, 28:] == 1).all()
    plain = Augmenter("crop_flip", mean, (32, 32), "cpu").pixels(images, rows, shift, flip, None)
    assert (plain[0, :4] == 0).all() and (plain[0, 4:, 4:] == 255).all()
