"""The pictures: curves.png of a run (redrawn each epoch), ood.png of an evaluation (ROC curves and
confidence histograms, clean and worst case); each checked to exist, to be a picture of the
expected size with content, and skipped in one line without matplotlib."""
import importlib.util
import json

import numpy as np
import pytest
import torch

from ratio_fast import TrainConfig
from ratio_fast.cli.main import main
from ratio_fast.evaluation.ood import ood_metrics
from ratio_fast.training.checkpoint import save_checkpoint

pytest.importorskip("matplotlib")
from ratio_fast.plots import roc_curve  # noqa: E402

FAST = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
        "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "16", "--epochs", "2"]


def assert_picture(path, size):
    """A PNG of `size` pixels with lines and text on it: several colours, not one flat field."""
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1::-1] == size
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50
    assert image.std() > 20 and (image < 100).any()  # dark strokes (lines, text) on the light background


def without_matplotlib(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))


def test_a_run_draws_its_curves_each_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(FAST + ["--out", str(out), "--epochs", "1"]) == 0
    first = (out / "curves.png").read_bytes()
    assert main(FAST + ["--out", str(out), "--resume", "--epochs", "2", "--log-every", "2"]) == 0
    assert (out / "curves.png").read_bytes() != first  # redrawn with the second epoch
    assert_picture(out / "curves.png", (800, 520))


def test_a_run_without_matplotlib_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    without_matplotlib(monkeypatch)
    assert main(FAST + ["--out", str(tmp_path / "run"), "--max-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count('note: no curves.png: matplotlib is not installed (pip install "ratio-fast[plots]")') == 1
    assert not (tmp_path / "run" / "curves.png").exists()


def test_roc_curve_area_is_the_auroc_of_the_metrics():
    rng = np.random.default_rng(0)
    positive, negative = rng.random(300).round(2), (rng.random(200) * 0.8).round(2)  # with ties
    fpr, tpr = roc_curve(positive, negative)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and (np.diff(fpr) >= 0).all()
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    assert area == pytest.approx(ood_metrics(torch.tensor(positive), torch.tensor(negative))["auroc"], abs=1e-9)


@pytest.fixture
def checkpoint(trained_tiny, tmp_path):
    state = trained_tiny.state_dict()
    save_checkpoint(tmp_path / "checkpoint.pt", {"config": TrainConfig(arch="tiny", dataset="synthetic").to_dict(),
                                                 "trainer": {"model": state, "ema": {"model": state}, "steps_done": 1}})
    return tmp_path / "checkpoint.pt"


EVAL = ["--device", "cpu", "--samples", "128", "--attacks", "none", "--ood", "uniform-noise,permuted-pixels",
        "--ood-samples", "64", "--ood-steps", "2"]


def test_eval_draws_roc_curves_and_histograms_per_ood_set(checkpoint, capsys):
    assert main(["eval", str(checkpoint), *EVAL]) == 0
    assert f"ROC curves and confidence histograms: {checkpoint.parent / 'eval' / 'ood.png'}" in capsys.readouterr().out
    assert_picture(checkpoint.parent / "eval" / "ood.png", (800, 512))  # two sets: two rows
    assert set(json.loads((checkpoint.parent / "eval" / "eval.json").read_text())["ood"]) == {
        "uniform-noise", "permuted-pixels"}


def test_eval_without_matplotlib_says_so_in_one_line(checkpoint, capsys, monkeypatch):
    without_matplotlib(monkeypatch)
    assert main(["eval", str(checkpoint), *EVAL]) == 0
    assert 'note: no ood.png: matplotlib is not installed (pip install "ratio-fast[plots]")\n' in capsys.readouterr().err
    assert not (checkpoint.parent / "eval" / "ood.png").exists()


def test_eval_at_several_radii_draws_robust_accuracy_against_the_radius(checkpoint, capsys):
    robust = ["--device", "cpu", "--samples", "64", "--attacks", "apgd-ce", "--steps", "3", "--ood", "none"]
    assert main(["eval", str(checkpoint), *robust, "--radii", "1.0,0.25"]) == 0
    out = capsys.readouterr().out
    results = json.loads((checkpoint.parent / "eval" / "eval.json").read_text())
    curve = results["robust_curve"]
    assert [eps for eps, _ in curve["points"]] == [0.25, 0.5, 1.0]  # --eps (the run's 0.5) among them, in order
    accuracy = dict(map(tuple, curve["points"]))
    assert accuracy[0.5] == results["robust"]["apgd-ce"]
    assert accuracy[1.0] < accuracy[0.25] <= results["clean_accuracy"]
    assert "robust accuracy at L2 1 " in out and "robust accuracy against the radius: " in out
    assert_picture(checkpoint.parent / "eval" / "robust_vs_radius.png", (440, 320))

    # A point of the curve is the robust accuracy an evaluation at that radius reports.
    assert main(["eval", str(checkpoint), *robust, "--eps", "1.0", "--out", str(checkpoint.parent / "at1")]) == 0
    assert json.loads((checkpoint.parent / "at1" / "eval.json").read_text())["robust"]["apgd-ce"] == accuracy[1.0]
