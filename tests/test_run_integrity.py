"""Runs that cannot be mixed up or lost: resume adopts or refuses settings, a run directory belongs
to one run, one writer per run directory, damaged checkpoints are refused wherever they are
loaded, seeds and finite radii and weights, and file-system failures in one line."""
import argparse
import errno
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ratio_fast import APGD, L2PGD, APGDTargeted, TrainConfig
from ratio_fast.training.checkpoint import load_checkpoint
from ratio_fast.cli.main import build_parser, main
from ratio_fast.errors import UserError
from ratio_fast.files import RunDirectoryLock, atomic_save

# 8 steps per epoch of the tiny model with short attacks, and settings that differ from the
# defaults (so a resume that forgot them would show).
FAST = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
        "--batch-size", "32", "--steps-in", "2", "--steps-out", "2", "--eval-samples", "32", "--lr", "0.05"]


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(args, capsys, after_training=False) -> str:
    """The error line of a command that must fail with exit code 2 and no traceback.

    after_training: training ran first, so progress lines (timed, so their number depends on the
    machine's speed) may precede the error; it is then the last line.
    """
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    if after_training:
        err = err.splitlines()[-1] + "\n"
    assert err.startswith("ratio-fast: error: ") and err.count("\n") == 1, err
    return err


def trainer_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["trainer"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A 2-epoch run of FAST stopped after 3 steps, and the same run done in one go."""
    root = tmp_path_factory.mktemp("runs")
    assert main(FAST + ["--epochs", "2", "--out", str(root / "straight")]) == 0
    assert main(FAST + ["--epochs", "2", "--max-steps", "3", "--out", str(root / "stopped")]) == 0
    return root


def copy_run(src, dst):
    dst.mkdir()
    for name in ("checkpoint.pt", "best.pt", "config.json", "metrics.jsonl"):
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def contents(run):
    """Every file of a run directory but its lock, by name: to show that nothing was written."""
    return {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}


def flip(path, offset=200_000, count=400):
    """What a bad disk sector or a careless copy does: `count` bytes inverted at `offset`."""
    data = bytearray(path.read_bytes())
    assert len(data) > offset + count
    data[offset:offset + count] = bytes(b ^ 0xFF for b in data[offset:offset + count])
    path.write_bytes(bytes(data))


# --- resume -------------------------------------------------------------------------------

def test_resume_with_only_the_checkpoint_continues_with_its_own_settings(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run / "stopped", tmp_path / "run")
    code, out, err = run_cli(["train", "--resume", str(run / "checkpoint.pt")], capsys)
    assert code == 0, err
    assert "resuming at step 3" in out and "(8 steps/epoch, 16 steps)" in out  # not the defaults' 80 steps
    resumed, straight = trainer_state(run / "checkpoint.pt"), trainer_state(stopped_run / "straight" / "checkpoint.pt")
    assert resumed["steps_done"] == straight["steps_done"] == 16
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    config = json.loads((run / "config.json").read_text())
    assert config["batch_size"] == 32 and config["lr"] == 0.05 and config["synthetic_size"] == 256
    assert config["max_steps"] is None  # --max-steps limits one invocation; the resume ran to the end


def test_resume_accepts_the_run_directory(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run / "stopped", tmp_path / "run")
    code, out, err = run_cli(["train", "--resume", str(run), "--max-steps", "4"], capsys)
    assert code == 0, err
    assert trainer_state(run / "checkpoint.pt")["steps_done"] == 4


@pytest.mark.parametrize("flags, listed", [
    (["--batch-size", "16"], ["--batch-size: checkpoint 32, given 16"]),
    (["--mode", "at", "--seed", "3"], ["--mode: checkpoint ratio, given at", "--seed: checkpoint 0, given 3"]),
    (["--lr", "0.1"], ["--lr: checkpoint 0.05, given 0.1"]),
    (["--synthetic-size", "512"], ["--synthetic-size: checkpoint 256, given 512"]),
    (["--arch", "resnet18"], ["--arch: checkpoint tiny, given resnet18"]),
    (["--eps-in", "0.25", "--amp"], ["--eps-in: checkpoint 0.5, given 0.25", "--amp: checkpoint not set, given True"]),
])
def test_resume_refuses_flags_that_change_the_computation_and_lists_each(stopped_run, tmp_path, capsys, flags, listed):
    run = copy_run(stopped_run / "stopped", tmp_path / "run")
    before = (run / "checkpoint.pt").read_bytes()
    err = one_line_error(["train", "--resume", str(run)] + flags, capsys)
    for difference in listed:
        assert difference in err
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing was trained or written


def test_resume_logs_the_settings_it_may_change(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run / "stopped", tmp_path / "run")
    code, out, err = run_cli(["train", "--resume", str(run), "--epochs", "1", "--eval-samples", "0",
                              "--checkpoint-every", "2", "--loader", "torch"], capsys)
    assert code == 0, err
    changed = next(line for line in out.splitlines() if line.startswith("resuming with changed settings"))
    for difference in ("--epochs: checkpoint 2, given 1", "--eval-samples: checkpoint 32, given 0",
                       "--checkpoint-every: checkpoint not set, given 2", "--loader: checkpoint auto, given torch"):
        assert difference in changed
    assert trainer_state(run / "checkpoint.pt")["steps_done"] == 8  # one epoch now


def test_resume_flags_from_a_config_file_count_as_given(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run / "stopped", tmp_path / "run")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"weight_decay": 0.0}))
    err = one_line_error(["train", "--resume", str(run), "--config", str(settings)], capsys)
    assert "--weight-decay: checkpoint 0.0005, given 0.0" in err


# --- a run directory belongs to one run -----------------------------------------------------

def test_resume_into_another_run_directory_is_refused_naming_both(stopped_run, tmp_path, capsys):
    a = copy_run(stopped_run / "stopped", tmp_path / "a")
    b = copy_run(stopped_run / "straight", tmp_path / "b")
    before_a, before_b = contents(a), contents(b)
    err = one_line_error(["train", "--resume", str(a / "checkpoint.pt"), "--out", str(b), "--max-steps", "8"], capsys)
    assert f"--out {b} holds another run ({b / 'checkpoint.pt'})" in err
    assert f"continues the run in {a}" in err
    assert contents(a) == before_a and contents(b) == before_b  # B's checkpoint, config and metrics untouched


def test_resume_into_a_new_directory_continues_a_copy_and_leaves_the_run_alone(stopped_run, tmp_path, capsys):
    a = copy_run(stopped_run / "stopped", tmp_path / "a")
    before = contents(a)
    copy = tmp_path / "copy"
    code, out, err = run_cli(["train", "--resume", str(a), "--out", str(copy)], capsys)
    assert code == 0, err
    assert f"continuing a copy of {a} (its metrics up to step 3 and best.pt) in {copy}" in out
    assert contents(a) == before
    # The copy went on exactly as the run would have, and holds its history up to the checkpoint.
    resumed, straight = trainer_state(copy / "checkpoint.pt"), trainer_state(stopped_run / "straight" / "checkpoint.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == (a / "metrics.jsonl").read_text().splitlines()[0]
    assert [json.loads(line)["step"] for line in lines] == [3, 8, 16]
    assert load_checkpoint(copy / "best.pt")["best"] == load_checkpoint(copy / "checkpoint.pt")["best"]


def test_a_directory_that_is_not_empty_is_no_place_for_a_copy(stopped_run, tmp_path, capsys):
    a = copy_run(stopped_run / "stopped", tmp_path / "a")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    err = one_line_error(["train", "--resume", str(a), "--out", str(other)], capsys)
    assert f"--out {other} is not empty (notes.txt)" in err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_finished_run_resumed_says_so_and_writes_nothing(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run / "straight", tmp_path / "run")
    before = contents(run)
    new = tmp_path / "new"
    code, out, err = run_cli(["train", "--resume", str(run / "checkpoint.pt"), "--out", str(new), "--max-steps", "1"],
                             capsys)
    assert code == 0, err
    assert f"nothing to do: the run in {run} is finished (16 of 16 steps" in out and "done:" not in out
    assert not new.exists()
    code, out, err = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 0 and "nothing to do" in out and "done:" not in out
    assert contents(run) == before


# --- damaged checkpoints --------------------------------------------------------------------

def test_a_damaged_checkpoint_is_refused_by_eval_export_and_resume(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run / "straight", tmp_path / "run")
    flip(run / "checkpoint.pt")
    best_step = trainer_state(run / "best.pt")["steps_done"]
    small_eval = ["--device", "cpu", "--samples", "8", "--attacks", "none", "--ood", "none"]
    for argv in (["eval", str(run / "checkpoint.pt"), *small_eval],
                 ["export", str(run / "checkpoint.pt"), "--out", str(tmp_path / "export")],
                 ["train", "--resume", str(run)]):
        err = one_line_error(argv, capsys)
        assert f"checkpoint {run / 'checkpoint.pt'}: corrupted: checksum mismatch" in err, argv
        assert f"the previous checkpoint is {run / 'best.pt'} (step {best_step}), intact" in err, argv
    assert not (tmp_path / "export").exists() and not (run / "eval").exists()
    flip(run / "best.pt")  # eval takes best.pt of a run directory
    err = one_line_error(["eval", str(run), *small_eval], capsys)
    assert f"checkpoint {run / 'best.pt'}: corrupted: checksum mismatch" in err
    assert "no other intact checkpoint of this run" in err


def test_a_directory_given_as_a_checkpoint_is_named_as_such(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(tmp_path)


# --- one writer per run directory ---------------------------------------------------------

HOLDER = """
import sys, time
from ratio_fast.files import RunDirectoryLock
lock = RunDirectoryLock(sys.argv[1]).acquire()  # held while the process lives
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_into_a_held_directory_fails_naming_the_holder_and_kill_9_frees_it(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = one_line_error(FAST + ["--epochs", "1", "--out", str(run)], capsys)
        assert str(run) in err and f"PID {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the lock with the process: no stale lock to clean up by hand.
    code, _, err = run_cli(FAST + ["--epochs", "1", "--max-steps", "1", "--out", str(run)], capsys)
    assert code == 0, err


def test_a_run_that_fails_to_start_leaves_no_directory_behind(tmp_path, capsys):
    run = tmp_path / "run"
    one_line_error(FAST + ["--out-data", str(tmp_path / "missing.npy"), "--out", str(run)], capsys)
    assert not run.exists()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunDirectoryLock(tmp_path / "run"):
        with pytest.raises(UserError, match=f"PID {os.getpid()}"):
            RunDirectoryLock(tmp_path / "run").acquire()
    RunDirectoryLock(tmp_path / "run").acquire().release()  # free again


def test_temporary_files_of_live_writers_are_left_alone_and_dead_ones_removed(tmp_path):
    target = tmp_path / "checkpoint.pt"
    host = __import__("socket").gethostname().replace(".", "-")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = tmp_path / f"checkpoint.pt.{host}.{sleeper.pid}.abcd1234.tmp"
        dead_tmp = tmp_path / f"checkpoint.pt.{host}.{dead.pid}.abcd1234.tmp"
        other_host_tmp = tmp_path / f"checkpoint.pt.elsewhere.{dead.pid}.abcd1234.tmp"
        for tmp in (live_tmp, dead_tmp, other_host_tmp):
            tmp.write_bytes(b"partial")
        atomic_save(target, {"w": torch.ones(3)})
        assert live_tmp.exists() and other_host_tmp.exists() and not dead_tmp.exists()
        assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save(tmp_path / "a.pt", {"w": torch.ones(1)})
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


# --- seeds ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_seeds_outside_the_generators_range_are_refused_in_one_line(tmp_path, capsys, seed):
    err = one_line_error(FAST + ["--seed", seed, "--out", str(tmp_path / "run")], capsys)
    assert f"--seed must be an integer >= 0 and <= {2**63 - 1}, got {seed}" in err
    assert not (tmp_path / "run").exists()


def test_the_largest_seed_trains(tmp_path, capsys):
    code, _, err = run_cli(FAST + ["--seed", str(2**63 - 1), "--epochs", "1", "--max-steps", "1", "--eval-samples",
                                   "0", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert trainer_state(tmp_path / "run" / "checkpoint.pt")["steps_done"] == 1


# --- finite radii, step sizes and weights -------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--eps-in", "nan"), ("--eps-out", "nan"), ("--lam", "inf"), ("--step-size-in", "nan"),
    ("--step-size-out", "-inf"), ("--lr", "nan"), ("--attack-momentum", "nan"), ("--ema-decay", "nan"),
    ("--weight-decay", "inf"),
])
def test_non_finite_numbers_are_refused_on_the_command_line(tmp_path, capsys, flag, value):
    err = one_line_error(FAST + [f"{flag}={value}", "--out", str(tmp_path / "run")], capsys)
    assert f"{flag} must be a finite number" in err and value in err
    assert not (tmp_path / "run").exists()


def test_the_attack_momentum_is_at_most_1(tmp_path, capsys):
    err = one_line_error(FAST + ["--attack-momentum", "1e9", "--out", str(tmp_path / "run")], capsys)
    assert "--attack-momentum must be a finite number >= 0 and <= 1, got 1000000000.0" in err
    with pytest.raises(ValueError, match="momentum must be a finite number >= 0 and <= 1"):
        L2PGD(eps=0.5, steps=1, step_size=0.1, momentum=1.5)
    assert L2PGD(eps=0.5, steps=1, step_size=0.1, momentum=1.0).momentum == 1.0


def test_non_finite_numbers_are_refused_in_a_config_file(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{"eps_out": NaN}')  # Python's json reads NaN
    err = one_line_error(FAST + ["--config", str(path), "--out", str(tmp_path / "run")], capsys)
    assert str(path) in err and "--eps-out must be a finite number" in err


@pytest.mark.parametrize("make", [
    lambda: L2PGD(eps=math.nan, steps=1, step_size=0.1),
    lambda: L2PGD(eps=0.5, steps=1, step_size=math.inf),
    lambda: L2PGD(eps=0.5, steps=1, step_size=0.1, momentum=math.nan),
    lambda: TrainConfig(eps_in=math.nan),
    lambda: TrainConfig(lam=math.inf),
    lambda: APGD(eps=math.nan, steps=10),
    lambda: APGDTargeted(eps=math.inf, steps=10),
])
def test_non_finite_numbers_are_refused_by_the_api_objects(make):
    with pytest.raises(ValueError, match="must be a finite number"):
        make()


# --- file-system failures: one line, the previous checkpoint intact -----------------------

def test_out_naming_an_existing_file(tmp_path, capsys):
    path = tmp_path / "taken"
    path.write_text("not a directory")
    err = one_line_error(FAST + ["--out", str(path)], capsys)
    assert str(path) in err and "not a directory" in err


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied")])
def test_out_on_a_file_system_that_refuses_writes(tmp_path, capsys, monkeypatch, code, reason):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("pathlib.Path.mkdir", refuse)
    err = one_line_error(FAST + ["--out", str(tmp_path / "run")], capsys)
    assert str(tmp_path / "run") in err and reason in err


def test_a_full_disk_mid_run_stops_in_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(FAST + ["--epochs", "3", "--max-steps", "8", "--out", str(run)]) == 0
    before = (run / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # most of the bytes got out, then the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    capsys.readouterr()
    err = one_line_error(["train", "--resume", str(run)], capsys, after_training=True)
    assert str(run / "checkpoint.pt") in err and "disk is full" in err and "--resume" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not list(run.glob("*.tmp"))


def test_export_into_a_file_or_onto_a_full_disk(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(FAST + ["--epochs", "1", "--max-steps", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    err = one_line_error(["export", str(run / "checkpoint.pt"), "--out", str(blocker)], capsys)
    assert str(blocker) in err

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    err = one_line_error(["export", str(run / "checkpoint.pt"), "--out", str(tmp_path / "export")], capsys)
    assert str(tmp_path / "export" / "model.pt") in err and "disk is full" in err


def test_eval_and_counterfactuals_write_errors_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(FAST + ["--epochs", "1", "--max-steps", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    small = ["--device", "cpu", "--samples", "8", "--attacks", "none", "--ood", "none"]
    err = one_line_error(["eval", str(run), "--out", str(blocker)] + small, capsys)
    assert f"--out {blocker}: exists and is not a directory" in err
    err = one_line_error(["counterfactuals", str(run), "--out", str(blocker), "--device", "cpu", "--steps", "1",
                          "--images", "0"], capsys)
    assert f"--out {blocker}: exists and is not a directory" in err
    err = one_line_error(["counterfactuals", str(run), "--radii=nan", "--device", "cpu"], capsys)
    assert "--radii must be a finite number > 0" in err


def test_a_bad_ood_file_is_named_with_the_eval_flag(tmp_path):
    from ratio_fast.evaluation.ood_sets import load_ood_set

    path = tmp_path / "bad.npy"
    __import__("numpy").save(path, __import__("numpy").zeros((4, 32, 32), "uint8"))
    with pytest.raises(UserError) as error:
        load_ood_set(str(path), dataset="synthetic", test_images=None, data_dir=tmp_path, samples=0, seed=0)
    assert str(error.value).startswith("--ood: ") and "--out-data" not in str(error.value)


# --- help ---------------------------------------------------------------------------------

def test_every_flag_has_help_with_its_default():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subcommands.choices.items():
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
        assert "(default: True)" not in text and "(default: False)" not in text, name  # switches say on/off
    train = subcommands.choices["train"].format_help()
    assert "--epochs EPOCHS" in train and "(default: 300)" in train
    assert "--fused-optimizer, --no-fused-optimizer" in train and "(default: on)" in train
    assert "75" in train and "--resume" in train  # the exit codes are documented
