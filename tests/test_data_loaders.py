"""The three loader kinds keep one contract and give the same batches (CPU; DALI with device_id=None).

The gpu loader is the reference: its augmentation is checked against PIL in
tests/test_data_autoaugment.py. The torch loader must equal it bit for bit for every (seed,
epoch, index) and every --augment, whatever order the batches are asked in, which is what exact
resume needs; so must DALI for crop_flip and none (its AutoAugment: tests/test_dali.py).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ratio_fast.data import BatchSpec, choose_loader_kind, make_loader, make_synthetic
from ratio_fast.data.dali import DaliLoader
from ratio_fast.data.loaders import DEVICE_RESIDENT_MAX_BYTES, ResidentLoader, TorchLoader
from ratio_fast.data.plan import Draws, EpochKeys, plan_batch
from ratio_fast.data.sources import ArraySource, ImageSource
from ratio_fast.errors import UserError

STREAMING = ["torch", "dali"]


def reference_and(kind, images, labels, batch_size, **spec):
    spec = BatchSpec(batch_size, **{"seed": 5, **spec})
    return make_loader("gpu", images, labels, spec, "cpu"), make_loader(kind, images, labels, spec, "cpu", workers=0)


def assert_same(a, b):
    (xa, ya), (xb, yb) = a, b
    assert xa.shape == xb.shape and xa.dtype == xb.dtype == torch.float32
    assert xa.stride() == xb.stride()  # same memory format
    assert torch.equal(xa, xb)
    assert (ya is None and yb is None) or torch.equal(ya, yb)


@pytest.mark.parametrize("kind", STREAMING)
@pytest.mark.parametrize("options", [
    dict(),
    dict(channels_last=True),
    dict(augment="crop_flip"),
    dict(augment="none"),
    dict(shuffle=False, augment="none"),
    dict(drop_last=False),
], ids=["default", "channels_last", "crop_flip", "none", "in_order", "keep_last"])
def test_streaming_loader_equals_resident_loader(kind, options):
    if kind == "dali" and options.get("augment", "autoaugment_cutout") == "autoaugment_cutout":
        options = {**options, "augment": "crop_flip"}  # DALI's own AutoAugment kernels: tests/test_dali.py
    x, y = make_synthetic(300)
    ref, other = reference_and(kind, x, y, 64, **options)
    assert len(ref) == len(other) == (4 if options.get("drop_last", True) else 5)
    # In order through an epoch boundary, then jumps back and forth (each reopens the stream).
    order = [(0, i) for i in range(len(ref))] + [(1, 0), (1, 1), (3, 2), (0, 1), (3, 3), (1, 0)]
    for epoch, index in order:
        assert_same(ref.batch(epoch, index), other.batch(epoch, index))


@pytest.mark.parametrize("kind", STREAMING)
def test_unlabelled_memmap_source(kind, tmp_path):
    """Out-distribution shape: no labels, a memory-mapped .npy read batch by batch."""
    from ratio_fast.data import load_out_distribution

    z = np.random.default_rng(1).integers(0, 256, (130, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "z.npy", z)
    source = load_out_distribution(str(tmp_path / "z.npy"), tmp_path, in_name="cifar10")
    ref, other = reference_and(kind, source, None, 32, augment="autoaugment_cutout" if kind == "torch" else "crop_flip")
    for index in range(len(ref)):
        xb, yb = other.batch(2, index)
        assert yb is None and xb.shape == (32, 3, 32, 32) and 0 <= xb.min() and xb.max() <= 1
        assert_same(ref.batch(2, index), (xb, yb))


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
    offsets, flips = torch.cat(offsets), torch.cat(flips).float()
    assert len(set(map(tuple, offsets.tolist()))) == 81  # all 9 x 9 integer offsets occur
    for axis in range(2):
        freq = torch.bincount(offsets[:, axis], minlength=9).float() / len(offsets)
        assert len(freq) == 9 and torch.all((freq - 1 / 9).abs() < 0.035)
    assert abs(flips.mean().item() - 0.5) < 0.04


def test_factory_kinds_and_auto_rule():
    x, y = make_synthetic(64)
    spec = BatchSpec(32)
    assert isinstance(make_loader("gpu", x, y, spec, "cpu"), ResidentLoader)
    assert isinstance(make_loader("torch", x, y, spec, "cpu"), TorchLoader)
    assert isinstance(make_loader("dali", x, y, spec, "cpu"), DaliLoader)
    # Small in-memory sets stay resident; big or decoded sets stream (DALI is installed here).
    assert choose_loader_kind("auto", x, "cpu").kind == "gpu"
    assert isinstance(make_loader("auto", x, y, spec, "cpu"), ResidentLoader)

    class Huge(ImageSource):
        def __len__(self):
            return DEVICE_RESIDENT_MAX_BYTES // 3072 + 1

    class Decoded(ArraySource):
        decodes = True

    assert choose_loader_kind("auto", Huge(), "cpu").kind == "dali"
    assert choose_loader_kind("auto", Decoded(x), "cpu").kind == "dali"
    assert choose_loader_kind("torch", Huge(), "cpu").kind == "torch"
    with pytest.raises(UserError, match="--loader gpu.*GiB"):
        make_loader("gpu", Huge(), None, spec, "cpu")
    with pytest.raises(UserError, match="--loader: unknown loader 'fast'"):
        make_loader("fast", x, y, spec, "cpu")
    with pytest.raises(UserError, match="--augment: unknown augmentation 'autoaugment'"):
        BatchSpec(32, augment="autoaugment")


@pytest.mark.gpu
@pytest.mark.parametrize("augment", ["crop_flip", "autoaugment_cutout"])
@pytest.mark.parametrize("kind", STREAMING)
def test_streaming_loaders_on_cuda_equal_resident_loader(kind, augment):
    """On CUDA too: the torch loader's CPU workers and the resident loader's CUDA kernels give the same bits."""
    if kind == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed on this GPU machine")
        if augment == "autoaugment_cutout":
            pytest.skip("DALI's AutoAugment kernels differ by design: tests/test_dali.py bounds them")
    x, y = make_synthetic(512)
    spec = BatchSpec(128, seed=3, augment=augment, channels_last=True)
    ref = make_loader("gpu", x, y, spec, "cuda")
    other = make_loader(kind, x, y, spec, "cuda", workers=2)
    for epoch, index in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 2)]:
        xa, ya = ref.batch(epoch, index)
        xb, yb = other.batch(epoch, index)
        assert xb.is_cuda and yb.is_cuda
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ---- what the augmentations leave as it was, and Cutout -------------------------------------

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


def test_the_authors_augmentation_keeps_the_crop_and_flip_draws():
    """AutoAugment and Cutout draw from hashes of their own: order, crops and flips stay those of crop_flip."""
    with_all = plan_batch(3, 1, 2, batch_size=64, num_samples=300, shuffle=True,
                          draws=Draws(crop_flip=True, autoaugment=True, cutout=True))
    crop_flip = plan_batch(3, 1, 2, batch_size=64, num_samples=300, shuffle=True)
    assert crop_flip.autoaugment is None and crop_flip.cutout is None
    assert with_all.autoaugment.shape == (64, 2) and with_all.cutout.shape == (64, 2)
    for name in ("indices", "shift", "flip"):
        assert np.array_equal(getattr(with_all, name), getattr(crop_flip, name))


def test_cutout_fills_one_square_clipped_at_the_border():
    """Each image gets rows [cy - 8, cy + 8) x columns [cx - 8, cx + 8) of the mean colour, clipped."""
    n, size = 512, 32
    x = np.random.default_rng(0).integers(1, 256, (n, size, size, 3), dtype=np.uint8)
    loader = make_loader("gpu", x, None, BatchSpec(128, seed=1), "cpu")
    mean = torch.tensor(loader.spec.mean)
    clipped = 0
    for epoch, index in [(0, 0), (0, 3), (2, 1)]:
        plan = loader.plan(epoch, index)
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


def test_cutout_centres_cover_the_image():
    drawn = EpochKeys(2, 0).cutout_centres(np.arange(40_000), (32, 32))
    assert len({tuple(c) for c in drawn.tolist()}) == 32 * 32
    for axis in range(2):
        freq = np.bincount(drawn[:, axis], minlength=32) / len(drawn)
        assert np.all(np.abs(freq - 1 / 32) < 0.1 / 32)
    tall = EpochKeys(2, 0).cutout_centres(np.arange(4_000), (24, 40))
    assert set(tall[:, 0].tolist()) == set(range(24)) and set(tall[:, 1].tolist()) == set(range(40))
