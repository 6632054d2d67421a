"""The three loader kinds keep one contract and give the same batches (CPU; DALI with device_id=None).

The gpu loader is the reference: its crop/flip is checked pixel by pixel in tests/test_data.py.
The streaming loaders (torch, dali) must equal it bit for bit for every (seed, epoch, index),
whatever order the batches are asked in, which is what exact resume needs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ratio_fast.data import (
    DEVICE_RESIDENT_MAX_BYTES,
    DaliLoader,
    DeviceLoader,
    ImageSource,
    TorchLoader,
    make_loader,
    make_synthetic,
    resolve_loader_kind,
)
from ratio_fast.data.image_source import ArraySource
from ratio_fast.data.plan import EpochKeys, plan_batch
from ratio_fast.errors import UserError

STREAMING = ["torch", "dali"]


def reference_and(kind, images, labels, batch_size, **kwargs):
    common = dict(seed=kwargs.pop("seed", 5), **kwargs)
    ref = make_loader("gpu", images, labels, batch_size, "cpu", **common)
    other = make_loader(kind, images, labels, batch_size, "cpu", workers=0, **common)
    return ref, other


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
    dict(augment=False),
    dict(shuffle=False, augment=False),
    dict(drop_last=False),
], ids=["default", "channels_last", "no_augment", "in_order", "keep_last"])
def test_streaming_loader_equals_resident_loader(kind, options):
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
    ref, other = reference_and(kind, source, None, 32)
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
    loader = make_loader(kind, x, None, 256, "cpu", seed=0, workers=0)
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
    assert isinstance(make_loader("gpu", x, y, 32, "cpu", seed=0), DeviceLoader)
    assert isinstance(make_loader("torch", x, y, 32, "cpu", seed=0), TorchLoader)
    assert isinstance(make_loader("dali", x, y, 32, "cpu", seed=0), DaliLoader)
    # Small in-memory sets stay resident; big or decoded sets stream (DALI is installed here).
    assert resolve_loader_kind("auto", x, "cpu") == "gpu"
    assert isinstance(make_loader("auto", x, y, 32, "cpu", seed=0), DeviceLoader)

    class Huge(ImageSource):
        def __len__(self):
            return DEVICE_RESIDENT_MAX_BYTES // 3072 + 1

    class Decoded(ArraySource):
        decodes = True

    assert resolve_loader_kind("auto", Huge(), "cpu") == "dali"
    assert resolve_loader_kind("auto", Decoded(x), "cpu") == "dali"
    assert resolve_loader_kind("torch", Huge(), "cpu") == "torch"
    with pytest.raises(UserError, match="--loader gpu.*GiB"):
        make_loader("gpu", Huge(), None, 32, "cpu", seed=0)
    with pytest.raises(UserError, match="--loader: unknown loader 'fast'"):
        make_loader("fast", x, y, 32, "cpu", seed=0)


@pytest.mark.gpu
@pytest.mark.parametrize("cutout", [False, True], ids=["plain", "cutout"])
@pytest.mark.parametrize("kind", STREAMING)
def test_streaming_loaders_on_cuda_equal_resident_loader(kind, cutout):
    if kind == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed on this GPU machine")
    x, y = make_synthetic(512)
    ref = make_loader("gpu", x, y, 128, "cuda", seed=3, channels_last=True, cutout=cutout)
    other = make_loader(kind, x, y, 128, "cuda", seed=3, channels_last=True, workers=2, cutout=cutout)
    for epoch, index in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 2)]:
        xa, ya = ref.batch(epoch, index)
        xb, yb = other.batch(epoch, index)
        assert xb.is_cuda and yb.is_cuda
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ---- cutout ------------------------------------------------------------------------------------

# sha256 of batches (0, 0), (1, 3), (2, 1) of make_synthetic(300), batch 64, seed 7, taken with the
# code from before cutout existed: cutout off must leave every batch bit for bit as it was.
DIGESTS_BEFORE_CUTOUT = {
    "default": "c49c346ef7a370b686fd289eea0ef296e48e8f96f1005047a471c4a6fe3882df",
    "no_augment_channels_last": "dd9fd06b5e9877dc80963967c732e8d878719fd4130faed825069a2fb9d2ed77",
}


@pytest.mark.parametrize("kind", ["gpu", *STREAMING], ids=["gpu-loader", *STREAMING])
@pytest.mark.parametrize("options", ["default", "no_augment_channels_last"])
def test_cutout_off_leaves_batches_as_they_were(kind, options):
    x, y = make_synthetic(300)
    extra = {} if options == "default" else dict(augment=False, channels_last=True)
    loader = make_loader(kind, x, y, 64, "cpu", seed=7, workers=0, cutout=False, **extra)
    digest = hashlib.sha256()
    for epoch, index in [(0, 0), (1, 3), (2, 1)]:
        xb, yb = loader.batch(epoch, index)
        digest.update(xb.numpy().tobytes())
        digest.update(yb.numpy().tobytes())
    assert digest.hexdigest() == DIGESTS_BEFORE_CUTOUT[options]


@pytest.mark.parametrize("kind", STREAMING)
@pytest.mark.parametrize("options", [dict(), dict(channels_last=True), dict(augment=False)],
                         ids=["default", "channels_last", "no_augment"])
def test_cutout_is_the_same_in_every_loader(kind, options):
    x, y = make_synthetic(300)
    ref, other = reference_and(kind, x, y, 64, cutout=True, **options)
    without = make_loader("gpu", x, y, 64, "cpu", seed=5, **options)
    for epoch, index in [(0, 0), (0, 1), (0, 2), (1, 0), (3, 2), (0, 1)]:
        assert_same(ref.batch(epoch, index), other.batch(epoch, index))
        assert not torch.equal(ref.batch(epoch, index)[0], without.batch(epoch, index)[0])


def cutout_squares(xb):
    """Per image: the rows and columns of its zeroed pixels, checked to form one rectangle."""
    zero = (xb == 0).all(1)  # (B, H, W): all three channels zero
    assert torch.equal(zero, (xb == 0).any(1))  # a square zeroes whole pixels
    rows, cols = zero.any(2), zero.any(1)
    assert torch.equal(zero, rows[:, :, None] & cols[:, None, :])  # a rectangle: rows x columns
    spans = []
    for r, c in zip(rows, cols):
        (r,), (c,) = r.nonzero(as_tuple=True), c.nonzero(as_tuple=True)
        assert len(r) == r[-1] - r[0] + 1 and len(c) == c[-1] - c[0] + 1  # contiguous
        spans.append((r[0].item(), r[-1].item() + 1, c[0].item(), c[-1].item() + 1))
    return spans


@pytest.mark.parametrize("augment", [False, True])
def test_cutout_zeroes_one_square_clipped_at_the_border(augment):
    n, size = 512, 32
    x = np.random.default_rng(0).integers(1, 256, (n, size, size, 3), dtype=np.uint8)  # no zero pixel
    loader = make_loader("gpu", x, None, 128, "cpu", seed=1, augment=augment, cutout=True)
    plain = make_loader("gpu", x, None, 128, "cpu", seed=1, augment=augment)
    clipped = 0
    for epoch, index in [(0, 0), (0, 3), (2, 1)]:
        xb, xp = loader.batch(epoch, index)[0], plain.batch(epoch, index)[0]
        centres = loader.plan(epoch, index).cutout
        square = torch.zeros(len(xb), size, size, dtype=torch.bool)
        for b, (cy, cx) in enumerate(centres):  # [c - 8, c + 8), slicing clips at the border
            square[b, max(cy - 8, 0):cy + 8, max(cx - 8, 0):cx + 8] = True
        assert torch.equal(xb, xp.masked_fill(square[:, None], 0))  # the square zeroed, nothing else
        if augment:
            continue  # crop padding adds zeros of its own
        for (r0, r1, c0, c1) in cutout_squares(xb):  # one rectangle per image, read back from pixels
            assert r1 - r0 <= 16 and c1 - c0 <= 16
            assert (r1 - r0 == 16 or r0 == 0 or r1 == size) and (c1 - c0 == 16 or c0 == 0 or c1 == size)
            clipped += (r1 - r0 < 16) + (c1 - c0 < 16)
    assert augment or clipped > 0  # the borders were exercised


def test_cutout_centres_cover_the_image():
    """Centres read back from the batches are uniform over the rows and columns; the plan's
    centres reach every pixel; turning cutout on leaves order, crops and flips unchanged."""
    n = 1024
    x = np.full((n, 32, 32, 3), 200, np.uint8)
    loader = make_loader("gpu", x, None, 512, "cpu", seed=2, augment=False, cutout=True)
    centres = []
    for epoch in range(4):
        for xb, _ in loader.epoch(epoch):
            for r0, r1, c0, c1 in cutout_squares(xb):
                centres.append((r0 + 8 if r0 > 0 else r1 - 8, c0 + 8 if c0 > 0 else c1 - 8))
    centres = torch.tensor(centres)
    for axis in range(2):
        freq = torch.bincount(centres[:, axis], minlength=32).float() / len(centres)
        assert len(freq) == 32 and torch.all((freq - 1 / 32).abs() < 0.35 / 32)

    drawn = EpochKeys(2, 0).cutout_centres(np.arange(40_000), (32, 32))
    assert len({tuple(c) for c in drawn.tolist()}) == 32 * 32
    tall = EpochKeys(2, 0).cutout_centres(np.arange(4_000), (24, 40))
    assert set(tall[:, 0].tolist()) == set(range(24)) and set(tall[:, 1].tolist()) == set(range(40))
    with_cutout = plan_batch(3, 1, 2, batch_size=64, num_samples=300, shuffle=True, cutout_hw=(32, 32))
    without = plan_batch(3, 1, 2, batch_size=64, num_samples=300, shuffle=True)
    assert without.cutout is None and with_cutout.cutout.shape == (64, 2)
    for name in ("indices", "shift", "flip"):
        assert np.array_equal(getattr(with_cutout, name), getattr(without, name))
