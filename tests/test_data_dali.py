"""Tests of ratio_fast.data.dali, the DALI loader: real worker processes (CPU pipelines,
device_id=None), and its AutoAugment.

tests/test_data_streaming.py checks its crop_flip and none batches against the gpu loader bit for
bit. With the authors' augmentation DALI applies the same plan (sub-policy, firing, sign per
sample and stage) with its own kernels, so each sample is compared by the operations it drew:
- invert, solarize, posterize, translate, rotate and no operation: identical;
- brightness, contrast, color, sharpness, autocontrast: within 1 level (DALI rounds where PIL
  truncates; its contrast centre is the float mean, PIL's the rounded one);
- shear: DALI's warps have no bicubic filter; bilinear differs on these smooth images by a mean
  below 2 levels (up to about 20 at sharp edges);
- equalize: DALI follows OpenCV (the cumulative count up to and including a value, PIL's below
  it), a shift of up to one histogram bin's share: a mean below 12 levels here, up to 64.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from PIL import Image

from ratio_fast.data import BatchSpec, load_out_distribution, make_loader, make_synthetic
from ratio_fast.data.autoaugment import decode_autoaugment
from ratio_fast.errors import UserError

EXACT = {"invert", "solarize", "posterize", "translateX", "translateY", "rotate", None}
WITHIN_ONE = {"brightness", "contrast", "color", "sharpness", "autocontrast"}
MEAN_BOUND = {"shearX": 2.0, "shearY": 2.0, "equalize": 12.0}


def test_parallel_workers_give_the_planned_batches():
    x, y = make_synthetic(400)
    spec = BatchSpec(64, seed=9, augment="crop_flip")
    ref = make_loader("gpu", x, y, spec, "cpu")
    dali = make_loader("dali", x, y, spec, "cpu", workers=2)
    # Sequential through the end of epoch 0 into epoch 1 (one stream), then a jump.
    for epoch, index in [(0, 3), (0, 4), (0, 5), (1, 0), (1, 1), (0, 2)]:
        xa, ya = ref.batch(epoch, index)
        xb, yb = dali.batch(epoch, index)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    dali.close()


def test_autoaugment_follows_the_plan_within_the_stated_tolerance():
    x, y = make_synthetic(512)
    spec = BatchSpec(256, seed=5)  # the authors' augmentation, the default
    ref = make_loader("torch", x, y, spec, "cpu", workers=0)
    dali = make_loader("dali", x, y, spec, "cpu", workers=2)
    differences = collections.defaultdict(list)
    for epoch, index in [(0, 0), (0, 1), (1, 0)]:
        (xa, ya), (xb, yb) = ref.batch(epoch, index), dali.batch(epoch, index)
        assert torch.equal(ya, yb)
        levels = ((xa - xb).abs() * 255).round()
        for b, codes in enumerate(ref.spec.plan(epoch, index, ref.num_samples, ref.image_hw).autoaugment):
            fired = [decode_autoaugment(int(code))[0] for code in codes if code]
            if len(fired) <= 1:  # one operation (or none): its own tolerance (two would compound)
                differences[fired[0] if fired else None].append(levels[b])
    dali.close()
    assert set(differences) >= EXACT | WITHIN_ONE | {"equalize"}  # every kind was drawn
    for name, images in differences.items():
        images = torch.stack(images)
        if name in EXACT:
            assert images.max() == 0, name
        elif name in WITHIN_ONE:
            assert images.max() <= 1, name
        else:
            assert images.mean() <= MEAN_BOUND[name], (name, images.mean())


def _folder_with_a_broken_image(tmp_path, n_good=40):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    broken = folder / "017_broken.png"
    broken.write_bytes((folder / "017.png").read_bytes()[:60])  # a PNG cut inside its data
    return folder, broken


@pytest.mark.parametrize("kind", ["dali", "torch"])
def test_bad_image_in_a_worker_is_a_one_line_user_error(tmp_path, kind, monkeypatch):
    folder, broken = _folder_with_a_broken_image(tmp_path)
    # Opening a folder decodes every image first (test_data_sources); this one breaks after that.
    monkeypatch.setattr("ratio_fast.data.sources._unreadable", lambda files, what: {})
    source = load_out_distribution(str(folder), tmp_path, in_name="cifar10")
    loader = make_loader(kind, source, None, BatchSpec(41, augment="none", shuffle=False), "cpu", workers=2)
    with pytest.raises(UserError) as info:
        loader.batch(0, 0)
    msg = str(info.value)
    assert str(broken) in msg and "cannot decode" in msg and "\n" not in msg
    loader.close()
