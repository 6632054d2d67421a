"""best.pt: training keeps the EMA weights of the epoch with the best clean test accuracy (the authors' best_avg)."""
import json

import pytest
import torch

from ratio_fast.cli.main import main
from ratio_fast.cli.run import Run

FAST = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
        "--batch-size", "32", "--steps-in", "2", "--steps-out", "2", "--eval-samples", "0", "--epochs", "3"]
STEPS_PER_EPOCH = 8
ACCURACY = [0.5, 0.9, 0.7]  # per epoch: the best is not the last


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def scripted_accuracy(monkeypatch):
    def evaluate(run):
        return {"test_clean_acc": ACCURACY[run.trainer.steps_done // STEPS_PER_EPOCH - 1]}
    monkeypatch.setattr(Run, "_evaluate", evaluate)


def test_best_pt_holds_the_best_epoch_also_across_a_resume(tmp_path, scripted_accuracy):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(FAST + ["--out", str(straight)]) == 0
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_clean_acc"] for r in records] == ACCURACY
    best, last = load(straight / "best.pt"), load(straight / "checkpoint.pt")
    assert best["best"] == {"epoch": 2, "step": 16, "test_clean_acc": 0.9}
    assert best["trainer"]["steps_done"] == 16 and last["trainer"]["steps_done"] == 24
    assert last["best"] == best["best"], "the last checkpoint remembers the best, for --resume"
    assert any(not torch.equal(v, last["trainer"]["ema"]["model"][k]) for k, v in best["trainer"]["ema"]["model"].items())

    # Stopped after the best epoch, then resumed: the third epoch does not replace it.
    assert main(FAST + ["--out", str(split), "--max-steps", "16"]) == 0
    assert main(FAST + ["--out", str(split), "--resume"]) == 0
    resumed = load(split / "best.pt")
    assert resumed["best"] == best["best"]
    for key, value in best["trainer"]["ema"]["model"].items():
        assert torch.equal(value, resumed["trainer"]["ema"]["model"][key]), key
