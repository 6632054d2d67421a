"""The DALI loader with real worker processes (CPU pipelines, device_id=None).

tests/test_data_loaders.py checks its batches against the gpu loader with the source read in
the calling thread; here the external source runs in DALI's parallel workers, as in training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ratio_fast.data import DaliLoader, DeviceLoader, TorchLoader, load_out_distribution, make_synthetic
from ratio_fast.errors import UserError


def test_parallel_workers_give_the_planned_batches():
    x, y = make_synthetic(400)
    ref = DeviceLoader(x, y, 64, "cpu", seed=9)
    dali = DaliLoader(x, y, 64, "cpu", seed=9, workers=2)
    # Sequential through the end of epoch 0 into epoch 1 (one stream), then a jump.
    for epoch, index in [(0, 3), (0, 4), (0, 5), (1, 0), (1, 1), (0, 2)]:
        xa, ya = ref.batch(epoch, index)
        xb, yb = dali.batch(epoch, index)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    dali.close()


def _folder_with_a_broken_image(tmp_path, n_good=40):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    broken = folder / "017_broken.png"
    broken.write_bytes((folder / "017.png").read_bytes()[:60])  # a PNG cut inside its data
    return folder, broken


@pytest.mark.parametrize("loader_class", [DaliLoader, TorchLoader])
def test_bad_image_in_a_worker_is_a_one_line_user_error(tmp_path, loader_class):
    folder, broken = _folder_with_a_broken_image(tmp_path)
    source = load_out_distribution(str(folder), tmp_path, in_name="cifar10")
    loader = loader_class(source, None, 41, "cpu", seed=0, augment=False, shuffle=False, workers=2)
    with pytest.raises(UserError) as info:
        loader.batch(0, 0)
    msg = str(info.value)
    assert str(broken) in msg and "cannot decode" in msg and "\n" not in msg
    loader.close()
