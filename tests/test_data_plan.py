"""Tests of ratio_fast.data.plan: the batch plan and sharding over ranks, for every loader kind.

The claims: the epoch order is a permutation; a batch is a pure function of (seed, epoch,
index); the augmentation draws are uniform, and the authors' AutoAugment and Cutout draws follow
their policy without changing the crop and flip draws; the shards of an epoch cover the
drop_last prefix exactly once; an N-rank run sees, slice by slice, the batches (and crops and
flips) of a 1-rank run with the same global batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ratio_fast.data import BatchSpec, make_loader
from ratio_fast.data.autoaugment import (CIFAR10_POLICY, NUM_AUTOAUGMENT_CODES, STAGES, autoaugment_code,
                                         decode_autoaugment)
from ratio_fast.data.plan import NUM_SHIFTS, Draws, EpochKeys, plan_batch, plan_epoch
from ratio_fast.errors import UserError

# The streaming kinds read in the calling process here (workers=0): the plan, not the
# worker machinery, is under test; tests/test_data_dali.py runs real workers.
KINDS = ["gpu", "torch", "dali"]
# The ids name loader kinds ("gpu-loader": the resident loader), not devices: these tests run on CPU.
KIND_IDS = [f"{kind}-loader" for kind in KINDS]


def id_images(n: int) -> np.ndarray:
    """Image i carries its id in channels 0 and 1 (i mod 256, i // 256) at every pixel."""
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[..., 0] = (np.arange(n) % 256)[:, None, None]
    x[..., 1] = (np.arange(n) // 256)[:, None, None]
    return x


def ids_of(x: torch.Tensor) -> np.ndarray:
    """Ids of un-augmented ``id_images`` batches."""
    v = torch.round(x[:, :2, 0, 0] * 255).long()
    return (v[:, 0] + 256 * v[:, 1]).numpy()


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1000, 4097])
def test_epoch_order_is_a_permutation(n):
    for seed, epoch in [(0, 0), (5, 3)]:
        order = EpochKeys(seed, epoch).order(np.arange(n), n, shuffle=True)
        assert sorted(order.tolist()) == list(range(n))
    if n >= 100:
        a = EpochKeys(0, 0).order(np.arange(n), n, shuffle=True)
        assert not np.array_equal(a, np.arange(n))  # shuffled
        assert not np.array_equal(a, EpochKeys(0, 1).order(np.arange(n), n, shuffle=True))  # per epoch
        assert not np.array_equal(a, EpochKeys(1, 0).order(np.arange(n), n, shuffle=True))  # per seed


def test_order_of_a_huge_set_costs_only_the_batch():
    """79 million rows (Tiny Images): a batch's rows come without an O(N) table."""
    n = 79_302_017
    rows = plan_batch(0, 2, 123_456, batch_size=128, num_samples=n, shuffle=True).indices
    assert rows.shape == (128,) and rows.min() >= 0 and rows.max() < n
    assert len(np.unique(rows)) == 128
    # Positions of a stretch of the epoch map to distinct rows spread over the whole file.
    many = EpochKeys(0, 2).order(np.arange(200_000), n, shuffle=True)
    assert len(np.unique(many)) == 200_000 and many.max() > 0.9 * n and many.min() < 0.1 * n


def test_augmentation_draws_are_uniform_and_per_position():
    plan = plan_epoch(3, 0, 90_000, shuffle=True)  # crop and flip draws by default
    for axis in range(2):
        freq = np.bincount(plan.shift[:, axis], minlength=NUM_SHIFTS) / len(plan)
        assert len(freq) == NUM_SHIFTS and np.all(np.abs(freq - 1 / NUM_SHIFTS) < 0.005)
    joint = np.bincount(plan.shift[:, 0] * NUM_SHIFTS + plan.shift[:, 1], minlength=NUM_SHIFTS ** 2)
    assert joint.min() > 0.8 * len(plan) / NUM_SHIFTS ** 2  # the axes are independent
    assert abs(plan.flip.mean() - 0.5) < 0.01
    # A batch's draws are those of its positions in the epoch plan.
    b = plan_batch(3, 0, 5, batch_size=64, num_samples=90_000, shuffle=True)
    assert np.array_equal(b.indices, plan.indices[320:384])
    assert np.array_equal(b.shift, plan.shift[320:384]) and np.array_equal(b.flip, plan.flip[320:384])


def test_the_authors_augmentation_keeps_the_crop_and_flip_draws():
    """AutoAugment and Cutout draw from hashes of their own: order, crops and flips stay those of crop_flip."""
    with_all = plan_batch(3, 1, 2, batch_size=64, num_samples=300, shuffle=True,
                          draws=Draws(crop_flip=True, autoaugment=True, cutout=True))
    crop_flip = plan_batch(3, 1, 2, batch_size=64, num_samples=300, shuffle=True)
    assert crop_flip.autoaugment is None and crop_flip.cutout is None
    assert with_all.autoaugment.shape == (64, 2) and with_all.cutout.shape == (64, 2)
    for name in ("indices", "shift", "flip"):
        assert np.array_equal(getattr(with_all, name), getattr(crop_flip, name))



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


def test_cutout_centres_cover_the_image():
    drawn = EpochKeys(2, 0).cutout_centres(np.arange(40_000), (32, 32))
    assert len({tuple(c) for c in drawn.tolist()}) == 32 * 32
    for axis in range(2):
        freq = np.bincount(drawn[:, axis], minlength=32) / len(drawn)
        assert np.all(np.abs(freq - 1 / 32) < 0.1 / 32)
    tall = EpochKeys(2, 0).cutout_centres(np.arange(4_000), (24, 40))
    assert set(tall[:, 0].tolist()) == set(range(24)) and set(tall[:, 1].tolist()) == set(range(40))


def test_global_batch_must_split_evenly():
    with pytest.raises(UserError, match="--batch-size 30.*divisible.*4"):
        BatchSpec(30, rank=0, world_size=4)
    with pytest.raises(ValueError):
        BatchSpec(32, rank=4, world_size=4)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_shards_cover_the_epoch_exactly_once(kind):
    n, batch, world = 203, 24, 4  # 8 full batches = 192 images; the last 11 are dropped
    x = id_images(n)
    loaders = [make_loader(kind, x, np.arange(n), BatchSpec(batch, seed=11, augment="none", rank=r, world_size=world),
                           "cpu", workers=0) for r in range(world)]
    for epoch in (0, 3):
        seen = []
        for loader in loaders:
            assert len(loader) == n // batch
            for xb, yb in loader.epoch(epoch):
                assert xb.shape == (batch // world, 3, 32, 32)
                assert np.array_equal(ids_of(xb), yb.numpy())  # labels travel with their images
                seen.append(yb.numpy())
        seen = np.concatenate(seen)
        assert len(seen) == (n // batch) * batch and len(np.unique(seen)) == len(seen)  # once each
        expected = plan_epoch(11, epoch, n, shuffle=True).indices[: (n // batch) * batch]
        assert np.array_equal(np.sort(seen), np.sort(expected))  # exactly the drop_last prefix


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_ranks_see_slices_of_the_single_rank_batches(kind):
    """Same global batch on 1 and on 3 ranks: identical pixels, all augmentation draws included."""
    n, batch = 150, 48
    x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % 10
    single = make_loader(kind, x, y, BatchSpec(batch, seed=2), "cpu", workers=0)
    ranks = [make_loader(kind, x, y, BatchSpec(batch, seed=2, rank=r, world_size=3), "cpu", workers=0)
             for r in range(3)]
    for epoch, index in [(0, 0), (0, 2), (4, 1)]:
        xs, ys = single.batch(epoch, index)
        parts = [loader.batch(epoch, index) for loader in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), xs)
        assert torch.equal(torch.cat([p[1] for p in parts]), ys)


def test_last_partial_batch_is_split_in_rank_order():
    """Without drop_last, the short last batch goes to the first ranks; nothing repeats."""
    n, batch, world = 70, 32, 4  # last global batch holds 6 images: ranks 0 (8 slots) gets them
    x = id_images(n)
    loaders = [make_loader("gpu", x, None, BatchSpec(batch, augment="none", drop_last=False, rank=r, world_size=world),
                           "cpu") for r in range(world)]
    assert len(loaders[0]) == 3
    last = [ids_of(loader.batch(0, 2)[0]) for loader in loaders]
    assert [len(ids) for ids in last] == [6, 0, 0, 0]
    everything = np.concatenate([ids_of(xb) for loader in loaders for xb, _ in loader.epoch(0)])
    assert sorted(everything.tolist()) == list(range(n))
