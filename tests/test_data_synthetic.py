"""Tests of ratio_fast.data.synthetic: the synthetic in- and out-distribution sets are
deterministic, balanced, learnable and far from one another."""

from __future__ import annotations

import numpy as np

from ratio_fast.data import make_synthetic, make_synthetic_out


def test_synthetic_is_deterministic_and_balanced():
    x, y = make_synthetic(1000, seed=3)
    x2, y2 = make_synthetic(1000, seed=3)
    assert x.shape == (1000, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, make_synthetic(1000, seed=4)[0])
    assert not np.array_equal(x, make_synthetic(1000, seed=3, split="test")[0])
    counts = np.bincount(y, minlength=10)
    assert counts.min() == counts.max() == 100
    assert 40 < x.std() < 90  # real contrast, not a flat or saturated image


def test_synthetic_test_split_shares_class_templates():
    """A nearest-class-mean classifier fit on train classifies test: the templates are shared."""
    x, y = make_synthetic(2000, split="train")
    xt, yt = make_synthetic(500, split="test")
    means = np.stack([x[y == k].reshape(-1, 3072).mean(0) for k in range(10)]) / 255
    dist = ((xt.reshape(-1, 1, 3072) / 255 - means[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == yt).mean() > 0.9
    # Class means are far apart compared to the L2 attack radius 0.5.
    gaps = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    assert gaps[~np.eye(10, dtype=bool)].min() > 5.0


def test_synthetic_out_is_deterministic_and_unlike_classes():
    z = make_synthetic_out(600, seed=1)
    assert z.shape == (600, 32, 32, 3) and z.dtype == np.uint8
    assert np.array_equal(z, make_synthetic_out(600, seed=1))
    assert not np.array_equal(z, make_synthetic_out(600, seed=2))
    x, y = make_synthetic(2000)
    means = np.stack([x[y == k].reshape(-1, 3072).mean(0) for k in range(10)]) / 255
    xt, _ = make_synthetic(300, split="test")

    def nearest_class_distance(imgs):
        d = ((imgs.reshape(-1, 1, 3072) / 255 - means[None]) ** 2).sum(-1)
        return np.sqrt(d.min(1))

    # Out-distribution images are much farther from every class than in-distribution ones.
    assert np.median(nearest_class_distance(z)) > 2 * np.median(nearest_class_distance(xt))
