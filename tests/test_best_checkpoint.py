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


# --test-every: the authors' test schedule (train_type.py: test 0-based epoch e when
# e % test_epochs == 0 or e / epochs >= 0.8), and best.pt chosen among the tested epochs only.

def authors_test_epoch(epoch, epochs, test_epochs):
    e = epoch - 1  # their loop is range(0, epochs)
    return (e / epochs >= 0.8) | (e % test_epochs == 0)


def test_test_epochs_are_the_authors():
    from ratio_fast.cli.run import is_test_epoch

    for epochs in range(1, 61):
        for every in range(1, 13):
            assert [is_test_epoch(k, epochs, every) for k in range(1, epochs + 1)] == \
                   [authors_test_epoch(k, epochs, every) for k in range(1, epochs + 1)], (epochs, every)
    # Their run (300 epochs, --test_epochs 10): epochs 1, 11, ..., 231, then every epoch from 241 on.
    tested = [k for k in range(1, 301) if is_test_epoch(k, 300, 10)]
    assert tested == list(range(1, 232, 10)) + list(range(241, 301))
    assert all(is_test_epoch(k, 7, 1) for k in range(1, 8)), "the default tests every epoch"


SCHEDULE = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "64",
            "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "0", "--epochs", "5",
            "--test-every", "3"]
SCHEDULE_STEPS_PER_EPOCH = 2
# per epoch; with 5 epochs and --test-every 3 only epochs 1, 4 and 5 are tested, so epoch 2's 0.99 is never seen
SCHEDULE_ACCURACY = [0.5, 0.99, 0.98, 0.8, 0.7]


def test_best_pt_is_chosen_among_the_tested_epochs_only(tmp_path, monkeypatch):
    tested = []

    def evaluate(run):
        epoch = run.trainer.steps_done // SCHEDULE_STEPS_PER_EPOCH
        tested.append(epoch)
        return {"test_clean_acc": SCHEDULE_ACCURACY[epoch - 1]}
    monkeypatch.setattr(Run, "_evaluate", evaluate)

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(SCHEDULE + ["--out", str(straight)]) == 0
    assert tested == [1, 4, 5]
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5], "untested epochs log their training metrics too"
    assert all("loss" in r and "clean_acc" in r for r in records)
    assert [r.get("test_clean_acc") for r in records] == [0.5, None, None, 0.8, 0.7]
    assert load(straight / "best.pt")["best"] == {"epoch": 4, "step": 8, "test_clean_acc": 0.8}

    # An untested epoch still ends with a checkpoint: stop after epoch 2, resume, same best.pt.
    assert main(SCHEDULE + ["--out", str(split), "--max-steps", "4"]) == 0
    assert load(split / "checkpoint.pt")["trainer"]["steps_done"] == 4
    assert main(SCHEDULE + ["--out", str(split), "--resume"]) == 0
    assert load(split / "best.pt")["best"] == load(straight / "best.pt")["best"]


def test_resume_refuses_another_test_schedule(tmp_path, capsys, monkeypatch):
    """--test-every decides which epochs best.pt (what eval and export use) is chosen from: a resume
    with another schedule would choose it under two rules, so it is refused like a computation setting."""
    monkeypatch.setattr(Run, "_evaluate", lambda run: {"test_clean_acc": 0.5})
    run_dir = tmp_path / "run"
    assert main(SCHEDULE + ["--out", str(run_dir), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(SCHEDULE[:-1] + ["1", "--out", str(run_dir), "--resume"]) == 2
    assert "--test-every: checkpoint 3, given 1" in capsys.readouterr().err
