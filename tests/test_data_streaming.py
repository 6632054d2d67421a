"""Tests of ratio_fast.data.streaming: the streaming loader kinds (torch here; DALI with
device_id=None) give the resident loader's batches, bit for bit.

The gpu loader is the reference: its augmentation is checked against PIL in
tests/test_data_autoaugment.py and tests/test_data_augment.py. The torch loader must equal it
bit for bit for every (seed, epoch, index) and every --augment, whatever order the batches are
asked in, which is what exact resume needs; so must DALI for crop_flip and none (its
AutoAugment: tests/test_data_dali.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ratio_fast.data import BatchSpec, make_loader, make_synthetic

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
        options = {**options, "augment": "crop_flip"}  # DALI's own AutoAugment kernels: tests/test_data_dali.py
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


@pytest.mark.gpu
@pytest.mark.parametrize("augment", ["crop_flip", "autoaugment_cutout"])
@pytest.mark.parametrize("kind", STREAMING)
def test_streaming_loaders_on_cuda_equal_resident_loader(kind, augment):
    """On CUDA too: the torch loader's CPU workers and the resident loader's CUDA kernels give the same bits."""
    if kind == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed on this GPU machine")
        if augment == "autoaugment_cutout":
            pytest.skip("DALI's AutoAugment kernels differ by design: tests/test_data_dali.py bounds them")
    x, y = make_synthetic(512)
    spec = BatchSpec(128, seed=3, augment=augment, channels_last=True)
    ref = make_loader("gpu", x, y, spec, "cuda")
    other = make_loader(kind, x, y, spec, "cuda", workers=2)
    for epoch, index in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 2)]:
        xa, ya = ref.batch(epoch, index)
        xb, yb = other.batch(epoch, index)
        assert xb.is_cuda and yb.is_cuda
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --- the resident loader ----------------------------------------------------------------------
