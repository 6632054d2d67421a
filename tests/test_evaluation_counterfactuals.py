"""Counterfactuals: per-radius targeted attacks, the PNG grid, the raw tensors, the command."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ratio_fast.training.checkpoint import save_checkpoint
from ratio_fast.cli.main import main
from ratio_fast.config import TrainConfig
from ratio_fast.evaluation.counterfactuals import (choose_targets, counterfactuals, runner_up, save_grid,
                                                  target_probability)


def test_counterfactuals_stay_in_each_radius_and_raise_the_target(trained_tiny, synthetic_split):
    x, y = synthetic_split["test"]
    x, y = x[:5], y[:5]
    targets = runner_up(trained_tiny, x, y)
    assert (targets != y).all()
    radii = (0.5, 1.5, 3.0)
    adv, conf = counterfactuals(trained_tiny, x, targets, radii, steps=8, batch_size=6, start="image")  # 2 per call
    assert adv.shape == (5, 3, 3, 32, 32) and conf.shape == (5, 3)
    norms = (adv - x[:, None]).flatten(2).norm(dim=2)
    assert (norms <= torch.tensor(radii) + 1e-5).all()
    assert ((adv >= 0) & (adv <= 1)).all()
    before = target_probability(trained_tiny, x, targets)
    assert (conf >= before[:, None] - 1e-6).all(), "starting at the image, never less confident"
    assert (conf[:, -1] > 0.5).float().mean() >= 0.8, "radius 3 reaches the target for most images"
    assert torch.allclose(conf, target_probability(trained_tiny, adv.flatten(0, 1), targets.repeat_interleave(3))
                          .view(5, 3))


def test_random_start_is_in_the_ball_not_the_image_and_seeded(trained_tiny, synthetic_split):
    """The authors' start: a random point on each radius's sphere (clipped to [0,1]); 0 steps return it."""
    x, y = synthetic_split["test"]
    x, y = x[:4], y[:4]
    targets = runner_up(trained_tiny, x, y)
    radii = (0.5, 2.0)
    start, _ = counterfactuals(trained_tiny, x, targets, radii, steps=0)
    norms = (start - x[:, None]).flatten(2).norm(dim=2)
    assert (norms <= torch.tensor(radii) + 1e-5).all() and (norms > 0.5 * torch.tensor(radii)).all()
    assert ((start >= 0) & (start <= 1)).all()
    assert not torch.equal(start[:, 0], start[:, 1]), "each radius draws its own point"
    from_image, _ = counterfactuals(trained_tiny, x, targets, radii, steps=0, start="image")
    assert torch.equal(from_image, x[:, None].expand_as(from_image))

    first, conf = counterfactuals(trained_tiny, x, targets, radii, steps=3, seed=7)
    again, conf_again = counterfactuals(trained_tiny, x, targets, radii, steps=3, seed=7)
    other, _ = counterfactuals(trained_tiny, x, targets, radii, steps=3, seed=8)
    assert torch.equal(first, again) and torch.equal(conf, conf_again), "the same seed, the same counterfactuals"
    assert not torch.equal(first, other)


def test_each_target_rule_picks_its_class(trained_tiny, synthetic_split):
    x, y = synthetic_split["test"]
    x, y = x[:16], y[:16]
    labels = torch.where(torch.arange(16) % 2 == 0, y, (y + 1) % 10)  # half the labels are not the prediction
    with torch.no_grad():
        logits = trained_tiny.eval()(x)
    prediction = logits.argmax(1)
    assert (prediction != labels).any() and (prediction == labels).any()
    assert torch.equal(choose_targets(trained_tiny, x, labels, "true"), labels)
    assert torch.equal(choose_targets(trained_tiny, x, labels, "predicted"), prediction)
    runner = choose_targets(trained_tiny, x, labels, "runner-up")
    assert (runner != labels).all()
    for i in range(16):  # the most likely class but the label
        others = [c for c in range(10) if c != labels[i]]
        assert int(runner[i]) == max(others, key=lambda c: float(logits[i, c]))
    assert torch.equal(choose_targets(trained_tiny, x, labels, "4"), torch.full_like(labels, 4))


def test_grid_png_is_written_and_opens(tmp_path, synthetic_split):
    x, _ = synthetic_split["test"]
    x = x[:2]
    adv = x[:, None].repeat(1, 3, 1, 1, 1)
    path = tmp_path / "grid.png"
    save_grid(path, x, adv, torch.rand(2, 3), torch.rand(2), (0.5, 1.0, 2.0), torch.tensor([3, 5]),
              torch.tensor([5, 3]), class_names=("a",) * 10, scale=4)
    with Image.open(path) as img:
        img.load()
        width, height = img.size
        assert img.mode == "RGB"
        # 4 columns of 128-pixel tiles, 2 rows of tiles plus captions
        assert width >= 4 * 128 and height >= 2 * 128
        # the first tile is the 4x nearest upscale of the first image
        tile = img.crop((6, 22, 6 + 128, 22 + 128))
    expected = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0)
    pixels = torch.from_numpy(np.array(tile)).reshape(32, 4, 32, 4, 3)[:, 0, :, 0]
    assert torch.equal(pixels, expected)


def write_checkpoint(path, model):
    state = model.state_dict()
    save_checkpoint(path, {"config": TrainConfig(arch="tiny", dataset="synthetic").to_dict(),
                           "trainer": {"model": state, "ema": {"model": state, "updates": 1}}, "rng": {}})


def test_counterfactuals_command(trained_tiny, tmp_path, capsys):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    assert main(["counterfactuals", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--images", "0,3,7",
                 "--radii", "0.5,2", "--steps", "5", "--target", "4", "--start", "image"]) == 0
    out_dir = tmp_path / "counterfactuals"
    assert "counterfactuals.png" in capsys.readouterr().out
    with Image.open(out_dir / "counterfactuals.png") as img:
        img.load()
        assert img.size[0] >= 3 * 128 and img.size[1] >= 3 * 128
    saved = load_file(out_dir / "counterfactuals.safetensors")
    assert saved["counterfactuals"].shape == (3, 2, 3, 32, 32)
    assert torch.equal(saved["targets"], torch.tensor([4, 4, 4]))
    assert torch.equal(saved["indices"], torch.tensor([0, 3, 7]))
    assert torch.allclose(saved["radii"], torch.tensor([0.5, 2.0]))
    assert (saved["target_confidence"] >= saved["original_target_confidence"][:, None] - 1e-6).all()


@pytest.mark.parametrize("extra, message", [
    (["--images", "0,99999"], "--images: index 99999 is outside the test set"),
    (["--images", "a"], "--images: 'a' is not an integer"),
    (["--radii", "0.5,-1"], "--radii must be a finite number > 0, got -1.0"),
    (["--radii", "-1,2"], "--radii must be a finite number > 0, got -1.0"),  # a value, not an unknown flag -1,2
    (["--target", "10"], "--target must be runner-up, true, predicted or a class in 0..9, got '10'"),
    (["--target", "best"], "--target must be runner-up, true, predicted or a class number, got 'best'"),
    (["--target", "-1"], "--target must be runner-up, true, predicted or a class number, got '-1'"),
    (["--start", "zero"], "--start: unknown start 'zero'; choose one of random, image"),
    (["--seed", "-1"], "--seed must be"),
])
def test_counterfactuals_bad_flags(trained_tiny, tmp_path, capsys, extra, message):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    assert main(["counterfactuals", str(tmp_path / "checkpoint.pt"), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ratio-fast: error:") and message in err and err.count("\n") == 1  # no usage text
