"""Runs that survive faults: preemption signals, kill -9 during checkpoint writes, every kind of
failed write (a real full file system too), bad config and checkpoint files, and runs whose steps
keep diverging. Real processes are started and killed."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from ratio_fast import digest
from ratio_fast.training.checkpoint import load_checkpoint, save_checkpoint
from ratio_fast.cli.main import EXIT_PREEMPTED, main
from ratio_fast.errors import UserError
from ratio_fast.cli.run import non_finite_advice

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
def test_a_repeated_sigterm_still_checkpoints_at_the_step_boundary(tmp_path):
    """Schedulers signal every process of a job and torchrun's agent passes its SIGTERM on: a
    worker may get two. The second one changes nothing."""
    proc = start(LONG, tmp_path, "run")
    wait_for_line(proc, "starting:")
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)  # handled by then (two signals at once would reach Python's handler as one)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "stopped by SIGTERM after step" in out
    assert 0 < trainer_state(tmp_path / "run" / "checkpoint.pt")["steps_done"] < 128


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
from ratio_fast.training.checkpoint import save_checkpoint
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
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(UserError) as error:
        save_checkpoint(path, {"config": {"arch": "tiny"}, "trainer": {"generation": 2}})
    monkeypatch.undo()
    assert str(path) in str(error.value) and "disk is full" in str(error.value)
    assert "previous checkpoint is kept" in str(error.value) and "\n" not in str(error.value)
    assert load_checkpoint(path)["trainer"]["generation"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def write_fails_after_the_first_bytes(self, data):
    """The file system fills up inside torch.save: torch turns the OSError into a RuntimeError."""
    if getattr(self, "calls", 0):
        no_space()
    self.calls = 1
    return self.out.write(data)


STREAM_WRITER = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed")


def stream_writer_fails(*args, **kwargs):
    raise RuntimeError(STREAM_WRITER)


def full_file_system(directory):
    return os.statvfs_result((4096, 4096, 1000, 0, 0, 100, 0, 0, 0, 255))


def failing_fsync(fd):
    raise OSError(errno.EIO, "Input/output error")


# what fails -> ([(object, attribute, replacement), ...], the reason the message must give)
WRITE_FAILURES = {
    "OSError from torch.save": ([(torch, "save", no_space)], "the disk is full"),
    "a write inside torch.save (RuntimeError, the OSError as its context)":
        ([(digest._Hashing, "write", write_fails_after_the_first_bytes)], "the disk is full"),
    "RuntimeError of torch's stream writer on a full disk":
        ([(torch, "save", stream_writer_fails), (os, "statvfs", full_file_system)], "the disk is full"),
    "RuntimeError of torch's stream writer, cause unknown":
        ([(torch, "save", stream_writer_fails)], "PytorchStreamWriter failed writing file data/0: file write failed"),
    "a failed fsync": ([(os, "fsync", failing_fsync)], "Input/output error"),
}


@pytest.mark.parametrize("failure", list(WRITE_FAILURES))
def test_every_kind_of_failed_write_is_one_line_naming_the_path_and_keeps_the_previous_file(
        tmp_path, monkeypatch, failure):
    patches, reason = WRITE_FAILURES[failure]
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"config": {"arch": "tiny"}, "trainer": {"generation": 1, "w": torch.randn(10_000)}})
    before = path.read_bytes()
    for owner, name, replacement in patches:
        monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(UserError) as error:
        save_checkpoint(path, {"config": {"arch": "tiny"}, "trainer": {"generation": 2, "w": torch.randn(10_000)}})
    monkeypatch.undo()
    message = str(error.value)
    assert message.startswith(f"cannot write {path}: {reason}") and "\n" not in message
    assert "previous checkpoint is kept" in message
    assert path.read_bytes() == before and load_checkpoint(path)["trainer"]["generation"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


@pytest.fixture
def small_file_system(tmp_path):
    """mount_small(size_bytes) -> a folder on a tmpfs of that size (unmounted afterwards); the test
    skips where mounting is not allowed (not root, or a container without the capability)."""
    mounted = []

    def mount_small(size: int):
        where = tmp_path / "small"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
        mounted.append(where)
        return where

    yield mount_small
    for where in mounted:  # lazily if a file there is still open (a failed test's traceback can hold one)
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_really_full_disk_stops_in_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, small_file_system):
    """The issue's `mount -t tmpfs -o size=...`: room for the first epoch's checkpoint and best.pt,
    not for the second epoch's checkpoint beside the first."""
    fast = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
            "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "32"]
    assert main(fast + ["--epochs", "1", "--max-steps", "1", "--out", str(tmp_path / "measure")]) == 0
    size = (tmp_path / "measure" / "checkpoint.pt").stat().st_size
    disk = small_file_system(int(2.5 * size) + 8 * 4096)
    capsys.readouterr()
    code = main(fast + ["--epochs", "2", "--out", str(disk / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]  # progress lines may come first
    assert last.startswith(f"ratio-fast: error: cannot write {disk / 'run' / 'checkpoint.pt'}: the disk is full")
    state = load_checkpoint(disk / "run" / "checkpoint.pt")  # the first epoch's, checksum intact
    assert state["trainer"]["steps_done"] == 8
    assert not list((disk / "run").glob("*.tmp"))


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
    """lr 1e30 blows the weights up after the first step; every later step is non-finite and skipped.
    The run stops at exactly --max-skipped-steps of them (steps 2-6), although the host reads the
    device's count only at the progress interval (here: the epoch's end, step 8) and before a
    checkpoint, and saves nothing computed after the limit (--checkpoint-every 7 would)."""
    fast = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
            "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "0", "--epochs", "2"]
    run = tmp_path / "run"
    code = main(fast + ["--lr", "1e30", "--max-skipped-steps", "5", "--checkpoint-every", "7", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 1
    # Progress lines may come first on a slow machine (they are timed); the stop is one last line.
    last = err.splitlines()[-1]
    assert last.startswith("ratio-fast: stopped: steps 2-6: 5 steps in a row had a non-finite loss or gradient")
    assert "(--max-skipped-steps 5)" in last and "Traceback" not in err
    assert last.endswith("; lower --lr")  # an fp32 run: no advice about AMP types
    assert not (run / "checkpoint.pt").exists()


def test_the_advice_for_non_finite_steps_fits_the_precision():
    assert non_finite_advice("fp32") == "lower --lr"
    assert "--amp-dtype bf16" in non_finite_advice("fp16")
    assert "--no-amp" in non_finite_advice("bf16") and "--amp-dtype" not in non_finite_advice("bf16")


def test_skipped_steps_are_counted_in_the_epoch_log(tmp_path, capsys):
    fast = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
            "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "0", "--epochs", "1"]
    assert main(fast + ["--lr", "1e30", "--out", str(tmp_path / "run")]) == 0  # 7 skips < the default 20
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["skipped_steps"] >= 1 and record["steps"] == 8
    assert "non-finite steps" in capsys.readouterr().out
