"""Runs that survive faults: preemption signals, kill -9 during checkpoint writes, bad config and
checkpoint files, and runs whose steps keep diverging. Real processes are started and killed."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ratio_fast.checkpoint import load_checkpoint, save_checkpoint
from ratio_fast.cli import EXIT_PREEMPTED, main
from ratio_fast.errors import UserError

# 64 steps per epoch of the tiny model with short attacks: a few seconds, long enough to interrupt.
LONG = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "2048",
        "--batch-size", "32", "--steps-in", "2", "--steps-out", "2", "--eval-samples", "32", "--epochs", "2"]


def start(args, tmp_path, name):
    """A training process whose stdout is read line by line."""
    return subprocess.Popen([sys.executable, "-m", "ratio_fast.cli", *args, "--out", str(tmp_path / name)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, prefix, timeout=120):
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line starting with {prefix!r}; stderr: {proc.stderr.read()}")


def trainer_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["trainer"]


def assert_same_training_state(a, b):
    assert a["steps_done"] == b["steps_done"]
    for part_a, part_b in ((a["model"], b["model"]), (a["ema"]["model"], b["ema"]["model"])):
        for key in part_a:
            assert torch.equal(part_a[key], part_b[key]), key
    for ma, mb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(ma["momentum_buffer"], mb["momentum_buffer"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The LONG run without interruption: what every interrupted-and-resumed run must end as."""
    out = tmp_path_factory.mktemp("straight")
    assert main(LONG + ["--out", str(out / "run")]) == 0
    return trainer_state(out / "run" / "checkpoint.pt")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_preemption_signal_checkpoints_at_a_step_boundary_and_resumes_exactly(tmp_path, uninterrupted, sig):
    proc = start(LONG, tmp_path, "run")
    wait_for_line(proc, "starting:")  # printed once the handlers are installed, before the first step
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err  # not 0: a job script can tell it from a finished run
    assert f"stopped by {signal.Signals(sig).name} after step" in out and "--resume" in out
    state = trainer_state(tmp_path / "run" / "checkpoint.pt")
    assert 0 < state["steps_done"] < 128  # stopped early, at a step boundary
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == state["steps_done"] and not record["complete"]

    assert main(LONG + ["--out", str(tmp_path / "run"), "--resume"]) == 0
    assert_same_training_state(trainer_state(tmp_path / "run" / "checkpoint.pt"), uninterrupted)


@pytest.mark.slow
def test_kill_9_mid_run_keeps_a_loadable_checkpoint_and_resumes_exactly(tmp_path, uninterrupted):
    """--checkpoint-every 1 rewrites the checkpoint after every step, so the kill lands during or
    between writes; whatever is on disk afterwards must load, and resuming must finish the run."""
    proc = start(LONG + ["--checkpoint-every", "1"], tmp_path, "run")
    path = tmp_path / "run" / "checkpoint.pt"
    wait_for_line(proc, "starting:")
    began = time.monotonic()
    while not path.exists() and time.monotonic() - began < 300:
        time.sleep(0.05)
    time.sleep(0.5)  # a few more steps, each rewriting the checkpoint
    proc.kill()
    proc.communicate(timeout=60)
    state = load_checkpoint(path)
    assert state["config"]["arch"] == "tiny" and 0 < state["trainer"]["steps_done"] < 128
    assert main(LONG + ["--out", str(tmp_path / "run"), "--resume"]) == 0
    assert_same_training_state(trainer_state(path), uninterrupted)
    assert not list((tmp_path / "run").glob("*.tmp"))  # a kill's leftovers are cleaned up


WRITER = """
import sys, torch
from ratio_fast.checkpoint import save_checkpoint
payload = {"config": {"arch": "tiny"}, "trainer": {"w": torch.randn(8_000_000)}}  # 32 MB per write
i = 0
while True:
    payload["trainer"]["generation"] = i
    save_checkpoint(sys.argv[1], payload)
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_corrupts_the_last_good_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rng = random.Random(0)
    last_generation = -1
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one complete write
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a later write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(path)
        generation = state["trainer"]["generation"]
        assert generation >= 0 and state["trainer"]["w"].numel() == 8_000_000
        last_generation = generation
    assert last_generation >= 0


def test_a_full_disk_inside_save_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"config": {"arch": "tiny"}, "trainer": {"generation": 1}})

    def dies_halfway(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(UserError) as error:
        save_checkpoint(path, {"config": {"arch": "tiny"}, "trainer": {"generation": 2}})
    monkeypatch.undo()
    assert str(path) in str(error.value) and "disk is full" in str(error.value)
    assert "previous checkpoint is kept" in str(error.value) and "\n" not in str(error.value)
    assert load_checkpoint(path)["trainer"]["generation"] == 1
    assert not list(tmp_path.glob("*.tmp"))


# --- bad checkpoint and config files: one clear line, never a traceback -----------------------

def fuzzed_versions(good: bytes, seed: int, count: int):
    """Truncations, bit flips and random bytes derived from a valid file."""
    rng = random.Random(seed)
    yield b""
    yield good[: len(good) // 2]
    yield good[:-1]
    for _ in range(count):
        data = bytearray(good)
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield bytes(data)
        yield bytes(rng.randrange(256) for _ in range(rng.randint(1, 2048)))


def test_fuzzed_checkpoints_load_or_raise_user_error(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"config": {"arch": "tiny"}, "trainer": {"w": torch.randn(64)}})
    for i, data in enumerate(fuzzed_versions(good.read_bytes(), seed=1, count=40)):
        path = tmp_path / f"fuzz{i}.pt"
        path.write_bytes(data)
        try:
            state = load_checkpoint(path)
        except UserError as e:
            assert str(path) in str(e) and "\n" not in str(e)
        else:  # a flip in padding or an unread field can leave a valid checkpoint
            assert state["config"]["arch"] == "tiny"


@pytest.mark.parametrize("content, expected", [
    ("", "not valid JSON"),
    ('{"epochs": 3,', "line 1"),
    ("[1, 2]", "JSON object"),
    ('{"epochz": 3}', "unknown setting(s) epochz"),
    ('{"epochs": "ten"}', "epochs must be int"),
    ('{"lr": true}', "lr must be float"),
    ('{"amp": 1}', "amp must be bool"),
    ('{"out_data": 5}', "out_data must be str | null"),
    ('{"lam": -1}', "--lam must be a finite number >= 0, got -1"),
])
def test_bad_config_files_give_one_line_errors(tmp_path, capsys, content, expected):
    path = tmp_path / "config.json"
    path.write_text(content)
    code = main(LONG + ["--config", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert expected in err


def test_config_file_sets_defaults_and_flags_override_it(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(LONG + ["--epochs", "1", "--max-steps", "2", "--lr", "0.05", "--out", str(first)]) == 0
    second = tmp_path / "second"
    assert main(["train", "--config", str(first / "config.json"), "--lr", "0.02", "--out", str(second)]) == 0
    a, b = (json.loads((run / "config.json").read_text()) for run in (first, second))
    assert b["lr"] == 0.02 and {k: v for k, v in a.items() if k != "lr"} == {k: v for k, v in b.items() if k != "lr"}
    capsys.readouterr()
    missing = tmp_path / "nope.json"
    assert main(["train", "--config", str(missing)]) == 2
    assert f"--config {missing}: no such file" in capsys.readouterr().err


def test_a_diverging_run_skips_non_finite_steps_then_stops_with_one_line(tmp_path, capsys):
    """lr 1e30 blows the weights up after the first step; every later step is non-finite and skipped."""
    fast = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
            "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "0", "--epochs", "2"]
    code = main(fast + ["--lr", "1e30", "--max-skipped-steps", "3", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    # Progress lines may come first on a slow machine (they are timed); the stop is one last line.
    last = err.splitlines()[-1]
    assert last.startswith("ratio-fast: stopped: ") and "--max-skipped-steps 3" in last
    assert "Traceback" not in err


def test_skipped_steps_are_counted_in_the_epoch_log(tmp_path, capsys):
    fast = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
            "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "0", "--epochs", "1"]
    assert main(fast + ["--lr", "1e30", "--out", str(tmp_path / "run")]) == 0  # 7 skips < the default 20
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["skipped_steps"] >= 1 and record["steps"] == 8
    assert "non-finite steps" in capsys.readouterr().out
