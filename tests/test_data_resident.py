"""Tests of ratio_fast.data.resident, the gpu loader kind: the contract's batch format, labels
that follow their images, batches as a pure function of (seed, epoch, index), drop_last and
coverage, bad inputs, and (on CUDA) no host synchronization.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ratio_fast.data import BatchSpec, make_synthetic
from ratio_fast.data.resident import ResidentLoader
from conftest import no_host_sync


def resident(images, labels, batch_size, **spec):
    return ResidentLoader(images, labels, BatchSpec(batch_size, **spec), "cpu")


def _id_images(n: int) -> np.ndarray:
    """Image i has value (i mod 256) at every pixel of channel 0 and i // 256 in channel 1."""
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[..., 0] = (np.arange(n) % 256)[:, None, None]
    x[..., 1] = (np.arange(n) // 256)[:, None, None]
    x[..., 2] = 1
    return x


def _ids(x: torch.Tensor) -> np.ndarray:
    """Recover image ids from un-augmented batches made of ``_id_images``."""
    v = torch.round(x[:, :2, 0, 0] * 255).long()
    return (v[:, 0] + 256 * v[:, 1]).numpy()


def test_loader_batch_format():
    x, y = make_synthetic(300)
    for channels_last in (False, True):
        loader = resident(x, y, 128, channels_last=channels_last)
        xb, yb = loader.batch(0, 1)
        assert len(loader) == 2
        assert xb.shape == (128, 3, 32, 32) and xb.dtype == torch.float32
        assert yb.shape == (128,) and yb.dtype == torch.int64
        assert 0.0 <= xb.min() and xb.max() <= 1.0 and xb.max() > 0.9
        assert xb.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert xb.is_contiguous() != channels_last

    unlabelled = resident(torch.from_numpy(x), None, 100)
    xb, yb = unlabelled.batch(0, 0)
    assert yb is None and xb.shape == (100, 3, 32, 32)


def test_loader_labels_follow_images_through_shuffle_and_augment():
    labels = np.arange(500) % 10
    x = np.broadcast_to((labels * 20 + 5).astype(np.uint8)[:, None, None, None], (500, 32, 32, 3)).copy()
    loader = resident(x, labels, 64, seed=1, augment="crop_flip")
    for epoch in range(2):
        for xb, yb in loader.epoch(epoch):
            # Crops pad with zeros, so the image's value is its maximum.
            assert torch.equal(torch.round(xb.amax(dim=(1, 2, 3)) * 255).long(), yb * 20 + 5)


def test_loader_is_pure_function_of_seed_epoch_index():
    x, y = make_synthetic(400)
    a = resident(x, y, 64, seed=7)
    b = resident(x, y, 64, seed=7)
    c = resident(x, y, 64, seed=8)
    xa, ya = a.batch(3, 4)
    xb, yb = b.batch(3, 4)  # fresh instance, no earlier batches or epochs drawn
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, c.batch(3, 4)[0])
    assert not torch.equal(xa, a.batch(4, 4)[0])  # epochs differ
    assert torch.equal(xa, a.batch(3, 4)[0])  # back to epoch 3 after the cache moved on
    # Resuming mid-epoch gives the same batches as the full pass.
    full = list(a.epoch(2))
    resumed = list(b.epoch(2, start=3))
    assert len(resumed) == len(full) - 3
    for (x1, y1), (x2, y2) in zip(full[3:], resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(next(iter(a))[0], a.batch(0, 0)[0])


def test_loader_drop_last_and_coverage():
    n = 300
    x = _id_images(n)
    keep = resident(x, None, 128, augment="none", drop_last=False)
    batches = [xb for xb, _ in keep.epoch(5)]
    assert len(keep) == 3 and [len(b) for b in batches] == [128, 128, 44]
    ids = np.concatenate([_ids(b) for b in batches])
    assert sorted(ids.tolist()) == list(range(n))  # every image exactly once per epoch
    assert not np.array_equal(ids, np.arange(n))  # shuffled

    drop = resident(x, None, 128, augment="none")
    assert len(drop) == 2
    with pytest.raises(IndexError):
        drop.batch(0, 2)

    ordered = ResidentLoader(x, None, BatchSpec.in_order(128), "cpu")  # what evaluation reads
    xb, _ = ordered.batch(0, 2)
    assert np.array_equal(_ids(xb), np.arange(256, 300))
    assert torch.equal(xb, torch.from_numpy(x[256:]).permute(0, 3, 1, 2).float() / 255)  # as is
    head = ordered.first(200)  # the first 200 images, in the same batches, the last one cut
    assert len(head) == 2 and head.num_samples == 200 and head.images.data_ptr() == ordered.images.data_ptr()
    assert torch.equal(head.batch(0, 1)[0], ordered.batch(0, 1)[0][:72])
    with pytest.raises(ValueError, match="shuffled"):
        keep.first(10)


def test_loader_rejects_bad_inputs():
    x, y = make_synthetic(10)
    with pytest.raises(ValueError):
        resident(x.astype(np.float32), y, 4)
    with pytest.raises(ValueError):
        resident(x, y[:5], 4)
    with pytest.raises(ValueError):
        resident(x, y, 16)  # drop_last leaves no batch


@pytest.mark.gpu
@pytest.mark.parametrize("augment", ["autoaugment_cutout", "crop_flip"])
def test_loader_batches_do_not_sync_the_host(augment):
    """The resident loader's batches, AutoAugment included, never wait for the GPU."""
    x, y = make_synthetic(512)
    loader = ResidentLoader(x, y, BatchSpec(128, augment=augment, channels_last=True), "cuda")
    loader.batch(0, 0)  # the epoch plan is copied to the device here, once
    with no_host_sync():
        xb, yb = loader.batch(0, 1)
    assert xb.is_cuda and yb.is_cuda
    assert torch.equal(xb.cpu(), ResidentLoader(x, y, loader.spec, "cpu").batch(0, 1)[0])  # CUDA = CPU, bit for bit


# --- --loader auto: measured once, the fastest wins, cached -----------------------------------