"""Tests of ratio_fast.data.augment: an --augment row as batched operations, in the batches of
every loader kind.

The authors' chain (``--augment autoaugment_cutout``: torchvision RandomCrop with a mean-colour
fill, horizontal flip, the PIL-based AutoAugment CIFAR-10 policy, Cutout on the float tensor)
is compared with a PIL re-enactment given the same plan, bit for bit (AutoAugment's operations
alone: tests/test_data_autoaugment.py). crop_flip and Cutout are followed through the batches of
every loader kind: the offsets and flips drawn, the zero padding, the filled square, and digests
of batches from before AutoAugment.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from ratio_fast.choices import AUGMENTATIONS
from ratio_fast.data import BatchSpec, make_loader, make_synthetic
from ratio_fast.data.augment import Augmenter, fill_colour
from ratio_fast.data.autoaugment import STAGES, decode_autoaugment, signed_magnitude
from ratio_fast.data.plan import PAD
from ratio_fast.datasets import CIFAR10
from test_data_autoaugment import FILL, reference_operation
from test_data_streaming import STREAMING


def test_the_authors_chain_equals_a_pil_reenactment_of_the_plan():
    """Crop from a mean-colour padding, flip, two policy stages, Cutout: whole batches, bit for bit."""
    n = 64
    images = np.random.default_rng(2).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    spec = BatchSpec(32, seed=3, augment="autoaugment_cutout", mean=CIFAR10.mean)
    loader = make_loader("gpu", images, None, spec, "cpu")
    for index in range(2):
        plan = loader.spec.plan(1, index, loader.num_samples, loader.image_hw)
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
            x = x * mask + (1 - mask) * torch.tensor(CIFAR10.mean, dtype=torch.float32)[:, None, None]
            assert torch.equal(xb[b], x), f"batch {index}, sample {b}"


def test_padding_and_cutout_fill_with_the_mean_colour():
    """autoaugment_cutout pads and cuts out with the data set's mean; crop_flip pads with zeros."""
    images = torch.full((1, 32, 32, 3), 255, dtype=torch.uint8)
    mean = (0.5, 0.25, 0.125)
    rows, shift, flip = torch.zeros(1, dtype=torch.long), torch.tensor([[0, 0]]), torch.tensor([0])
    authors = Augmenter(AUGMENTATIONS["autoaugment_cutout"], mean, (32, 32), "cpu")
    codes = torch.zeros(1, STAGES, dtype=torch.long)
    x = authors.pixels(images, rows, shift, flip, codes)  # shifted by (-4, -4): top and left are padding
    assert x[0, :4, :, :].tolist() == [[list(fill_colour(mean))] * 32] * 4 and (x[0, 4:, 4:] == 255).all()
    assert fill_colour(CIFAR10.mean) == (125, 122, 113)  # int(255 * mean), truncated as the authors write it
    model_input = authors.model_input(x, False, torch.tensor([[20, 20]]))
    assert torch.equal(model_input[0, :, 12:28, 12:28], torch.tensor(mean)[:, None, None].expand(3, 16, 16))
    assert (model_input[0, :, 28:, 28:] == 1).all()
    plain = Augmenter(AUGMENTATIONS["crop_flip"], mean, (32, 32), "cpu").pixels(images, rows, shift, flip, None)
    assert (plain[0, :4] == 0).all() and (plain[0, 4:, 4:] == 255).all()


# ---- crop_flip and Cutout in every loader's batches, and what they leave as it was --------------


@pytest.mark.parametrize("kind", ["gpu", *STREAMING], ids=["gpu-loader", *STREAMING])
def test_crop_offsets_and_flip_statistics(kind):
    """Two marker pixels give back each draw's (dy, dx, flip): all 81 offset pairs, flips about half."""
    n = 768
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[:, 16, 16, 0] = 255  # red marker
    x[:, 16, 17, 1] = 255  # green marker, right of the red one before any flip
    loader = make_loader(kind, x, None, BatchSpec(256, augment="crop_flip"), "cpu", workers=0)
    offsets, flips = [], []
    for epoch in range(3):
        for xb, _ in loader.epoch(epoch):
            red, green = xb[:, 0].flatten(1).argmax(1), xb[:, 1].flatten(1).argmax(1)
            ri, rj, gj = red // 32, red % 32, green % 32
            flipped = gj == rj - 1
            assert torch.all(flipped | (gj == rj + 1)) and torch.equal(green // 32, ri)
            dy = 20 - ri  # output row i shows source row i + dy - 4
            dx = torch.where(flipped, rj + 16 - 31 + 4, 20 - rj)
            offsets.append(torch.stack([dy, dx], 1))
            flips.append(flipped)
            # Exactly two marker pixels survive (the padding adds zeros, nothing else).
            assert torch.equal((xb > 0).sum(dim=(1, 2, 3)), torch.full((len(xb),), 2))
    offsets, flips = torch.cat(offsets), torch.cat(flips).float()
    assert len(set(map(tuple, offsets.tolist()))) == 81  # all 9 x 9 integer offsets occur
    for axis in range(2):
        freq = torch.bincount(offsets[:, axis], minlength=9).float() / len(offsets)
        assert len(freq) == 9 and torch.all((freq - 1 / 9).abs() < 0.035)
    assert abs(flips.mean().item() - 0.5) < 0.04


def test_crop_flip_pads_with_zeros():
    x = np.full((512, 32, 32, 3), 200, np.uint8)
    xb, _ = make_loader("gpu", x, None, BatchSpec(512, augment="crop_flip"), "cpu").batch(0, 0)
    v = torch.round(xb * 255)
    rows_zero = (v == 0).all(dim=(1, 3))  # (B, 32): whole row black in all channels
    cols_zero = (v == 0).all(dim=(1, 2))
    assert rows_zero.sum(1).max() == 4 and cols_zero.sum(1).max() == 4
    assert torch.equal((v == 0) | (v == 200), torch.ones_like(v, dtype=torch.bool))
    assert (rows_zero.sum(1) == 0).any()  # the centre crop occurs too


# sha256 of batches (0, 0), (1, 3), (2, 1) of make_synthetic(300), batch 64, seed 7, taken with the
# code from before cutout (and then AutoAugment) existed: crop_flip and none must still give every
# batch bit for bit as it was (the old default and --no-augment), so old runs repeat exactly.
DIGESTS_BEFORE_AUTOAUGMENT = {
    "crop_flip": "c49c346ef7a370b686fd289eea0ef296e48e8f96f1005047a471c4a6fe3882df",
    "none_channels_last": "dd9fd06b5e9877dc80963967c732e8d878719fd4130faed825069a2fb9d2ed77",
}


@pytest.mark.parametrize("kind", ["gpu", *STREAMING], ids=["gpu-loader", *STREAMING])
@pytest.mark.parametrize("options", ["crop_flip", "none_channels_last"])
def test_crop_flip_and_none_leave_batches_as_they_were(kind, options):
    x, y = make_synthetic(300)
    spec = BatchSpec(64, seed=7, augment="crop_flip") if options == "crop_flip" else \
        BatchSpec(64, seed=7, augment="none", channels_last=True)
    loader = make_loader(kind, x, y, spec, "cpu", workers=0)
    digest = hashlib.sha256()
    for epoch, index in [(0, 0), (1, 3), (2, 1)]:
        xb, yb = loader.batch(epoch, index)
        digest.update(xb.numpy().tobytes())
        digest.update(yb.numpy().tobytes())
    assert digest.hexdigest() == DIGESTS_BEFORE_AUTOAUGMENT[options]


def test_cutout_fills_one_square_clipped_at_the_border():
    """Each image gets rows [cy - 8, cy + 8) x columns [cx - 8, cx + 8) of the mean colour, clipped."""
    n, size = 512, 32
    x = np.random.default_rng(0).integers(1, 256, (n, size, size, 3), dtype=np.uint8)
    loader = make_loader("gpu", x, None, BatchSpec(128, seed=1), "cpu")
    mean = torch.tensor(loader.spec.mean)
    clipped = 0
    for epoch, index in [(0, 0), (0, 3), (2, 1)]:
        plan = loader.spec.plan(epoch, index, loader.num_samples, loader.image_hw)
        pixels = loader.augmenter.pixels(loader.images, torch.from_numpy(plan.indices), torch.from_numpy(plan.shift),
                                         torch.from_numpy(plan.flip), torch.from_numpy(plan.autoaugment))
        uncut = pixels.permute(0, 3, 1, 2).float() / 255
        square = torch.zeros(len(plan), size, size, dtype=torch.bool)
        for b, (cy, cx) in enumerate(plan.cutout):  # [c - 8, c + 8), slicing clips at the border
            square[b, max(cy - 8, 0):cy + 8, max(cx - 8, 0):cx + 8] = True
            clipped += (cy < 8) or (cx < 8) or (cy > size - 8) or (cx > size - 8)
        expected = torch.where(square[:, None], mean[None, :, None, None], uncut)
        assert torch.equal(loader.batch(epoch, index)[0], expected)  # the square filled, nothing else
    assert clipped > 0  # the borders were exercised
