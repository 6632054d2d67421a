"""What a run records for plotting: per-step rows in metrics.jsonl (--log-every), train.log (the
console lines, appended on resume) and TensorBoard events (--tensorboard)."""
import importlib.util
import json
import re

import pytest

from ratio_fast.cli.main import main

FAST = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
        "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "16", "--epochs", "2"]
STEP_KEYS = {"kind", "epoch", "step", "loss", "loss_in", "loss_out", "adv_acc", "clean_acc", "out_conf", "lr",
             "images_per_s", "skipped_steps"}


def rows(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """2 epochs of 8 steps, every step logged, in two invocations (the second resumes)."""
    run = tmp_path_factory.mktemp("logs") / "run"
    line = FAST + ["--out", str(run), "--log-every", "1", "--resume", "auto"]
    if importlib.util.find_spec("tensorboard"):
        line.append("--tensorboard")
    assert main(line + ["--max-steps", "8"]) == 0
    (run / "metrics.jsonl").open("a").write(json.dumps({"kind": "step", "epoch": 2, "step": 12, "loss": -1.0}) + "\n")
    assert main(line) == 0  # resumes at step 8; the row of step 12 (as a crash would leave it) goes
    return run


def test_every_step_has_a_row_whose_means_make_the_epoch_row(logged_run):
    steps = rows(logged_run, "step")
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert all(set(r) == STEP_KEYS for r in steps)
    for epoch in rows(logged_run, "epoch"):
        mine = [r for r in steps if r["epoch"] == epoch["epoch"]]
        for key in ("loss", "loss_in", "loss_out", "adv_acc", "out_conf"):
            assert sum(r[key] for r in mine) / len(mine) == pytest.approx(epoch[key], rel=1e-5), key
        assert mine[-1]["lr"] == epoch["lr"] and epoch["skipped_steps"] == 0
    first = steps[0]
    # RATIO's loss: half the in-distribution CE plus half lambda (1) times the out-distribution KL
    assert first["loss"] == pytest.approx(0.5 * first["loss_in"] + 0.5 * first["loss_out"], rel=1e-5)
    assert all(r["images_per_s"] > 0 and 0 <= r["out_conf"] <= 1 for r in steps)


def test_train_log_holds_the_console_lines_of_both_invocations(logged_run):
    lines = (logged_run / "train.log").read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines)
    text = "\n".join(lines)
    assert "starting: ratio training of tiny" in text and "resuming at step 8" in text
    assert text.index("starting:") < text.index("epoch 1/2 | loss") < text.index("resuming at step 8") \
        < text.index("epoch 2/2 | loss") < text.index("done: 16 steps")


def test_old_readers_of_epoch_rows_still_work_with_step_rows(logged_run):
    import ratio_fast as rf

    assert [r["epoch"] for r in rf.load_run(logged_run).metrics if r["kind"] == "epoch"] == [1, 2]


def test_tensorboard_events_hold_the_rows(logged_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard")).Reload()
    loss = events.Scalars("step/loss")
    assert [e.step for e in loss] == list(range(1, 17))  # the purged step 12 of the first invocation is not there
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows(logged_run, "step")], rel=1e-6)
    accuracy = events.Scalars("epoch/test_clean_acc")
    assert [(e.step, e.value) for e in accuracy] == pytest.approx(
        [(r["step"], r["test_clean_acc"]) for r in rows(logged_run, "epoch")], rel=1e-6)


def test_tensorboard_missing_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(FAST + ["--out", str(tmp_path / "run"), "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err == 'ratio-fast: error: --tensorboard needs the tensorboard package: pip install tensorboard (or ' \
                  '"ratio-fast[tensorboard]")\n'
    assert not (tmp_path / "run").exists()
