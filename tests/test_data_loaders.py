"""The three loader kinds keep one contract and give the same batches (CPU; DALI with device_id=None).

The gpu loader is the reference: its crop/flip is checked pixel by pixel in tests/test_data.py.
The streaming loaders (torch, dali) must equal it bit for bit for every (seed, epoch, index),
whatever order the batches are asked in, which is what exact resume needs.
"""

from __future__ import annotations

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
@pytest.mark.parametrize("kind", STREAMING)
def test_streaming_loaders_on_cuda_equal_resident_loader(kind):
    if kind == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed on this GPU machine")
    x, y = make_synthetic(512)
    ref = make_loader("gpu", x, y, 128, "cuda", seed=3, channels_last=True)
    other = make_loader(kind, x, y, 128, "cuda", seed=3, channels_last=True, workers=2)
    for epoch, index in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 2)]:
        xa, ya = ref.batch(epoch, index)
        xb, yb = other.batch(epoch, index)
        assert xb.is_cuda and yb.is_cuda
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
