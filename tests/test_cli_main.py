"""`ratio-fast train` end to end: the CPU demo, exact resume, and one-line errors for bad input."""
import argparse
import dataclasses
import json
import pickle
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from ratio_fast.cli.main import build_parser, main
from ratio_fast.config import TrainConfig, flag_name
from ratio_fast.errors import UserError

# A few seconds per run: 8 steps per epoch of a tiny model with short attacks.
FAST = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
        "--batch-size", "32", "--steps-in", "2", "--steps-out", "2", "--eval-samples", "32"]


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_readme_demo_learns_in_one_epoch_on_cpu(tmp_path):
    """The README's main job, exactly as written there (plus --out), in a fresh process."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "ratio_fast.cli", "train", "--dataset", "synthetic", "--arch", "tiny",
           "--epochs", "1", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)  # 30 s here; a safety net only
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stderr  # progress
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["complete"] and record["steps"] == 80
    # from chance (10 %) to a model that has learned the classes and is robust at eps 0.5
    assert record["test_clean_acc"] > 0.9
    assert record["test_robust_acc"] > 0.8
    assert record["out_conf"] < 0.5
    assert "test clean" in proc.stdout and "done: 80 steps" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "tiny" and config["eps_in"] == 0.5 and config["eps_out"] == 1.0
    state = load(out / "checkpoint.pt")
    assert state["trainer"]["steps_done"] == 80 and state["config"] == config


@pytest.mark.parametrize("stop_at", [5, 8])  # mid-epoch, and exactly at the epoch boundary
def test_resume_matches_an_uninterrupted_run(tmp_path, capsys, stop_at):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(FAST + ["--epochs", "2", "--out", str(straight)], capsys)[0] == 0
    assert run_cli(FAST + ["--epochs", "2", "--out", str(split), "--max-steps", str(stop_at)], capsys)[0] == 0
    assert load(split / "checkpoint.pt")["trainer"]["steps_done"] == stop_at
    assert run_cli(FAST + ["--epochs", "2", "--out", str(split), "--resume"], capsys)[0] == 0

    a, b = load(straight / "checkpoint.pt")["trainer"], load(split / "checkpoint.pt")["trainer"]
    assert a["steps_done"] == b["steps_done"] == 16
    for sa, sb in ((a["model"], b["model"]), (a["ema"]["model"], b["ema"]["model"])):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    for ma, mb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(ma["momentum_buffer"], mb["momentum_buffer"])


def test_at_and_plain_modes_run(tmp_path, capsys):
    for mode in ("at", "plain"):
        code, out, _ = run_cli(FAST + ["--epochs", "1", "--mode", mode, "--out", str(tmp_path / mode)], capsys)
        assert code == 0 and "out-conf" not in out


def test_cifar_and_npy_data_from_files(tmp_path, capsys):
    """Real file formats: a CIFAR-10 pickle folder in and a .npy array out."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (16, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, 16).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    out_npy = tmp_path / "out.npy"
    np.save(out_npy, rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    args = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--out-data", str(out_npy),
            "--arch", "tiny", "--device", "cpu", "--epochs", "1", "--batch-size", "16", "--steps-in", "1",
            "--steps-out", "1", "--eval-samples", "16", "--out", str(tmp_path / "run")]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "epoch 1/1" in out


def error_of(args, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "Traceback" not in err and err.startswith("ratio-fast: error: ") and err.count("\n") == 1
    return err


@pytest.mark.parametrize("flags, expected", [
    (["--arch", "foo"], "--arch"),
    (["--eps-in", "-1"], "--eps-in"),
    (["--eps-out", "-0.5"], "--eps-out"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--max-steps", "0"], "--max-steps"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--out-data", "svhn"], "--out-data"),
])
def test_bad_flags_give_one_line_errors(tmp_path, capsys, flags, expected):
    assert expected in error_of(FAST + ["--out", str(tmp_path / "run")] + flags, capsys)


def test_train_flags_and_checks_come_from_the_settings():
    """Every TrainConfig setting but momentum (set by --config) has its flag, with the field's
    default; a value outside a setting's choices is refused by the flag and by TrainConfig alike."""
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = {action.dest: action for action in subcommands.choices["train"]._actions}
    defaults = TrainConfig().flag_defaults()  # the radii and step sizes left to --norm: unset
    for field in dataclasses.fields(TrainConfig):
        if field.name == "momentum":
            assert field.name not in actions
            continue
        action = actions[field.name]
        assert action.option_strings[0] == flag_name(field.name) and action.default == getattr(defaults, field.name)
        if action.choices is not None:
            with pytest.raises(UserError, match=f"^{flag_name(field.name)} must be one of .*, got 'nope'$"):
                TrainConfig(**{field.name: "nope"})


def test_triton_backend_on_cpu_without_the_interpreter(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "--backend triton" in error_of(FAST + ["--backend", "triton", "--out", str(tmp_path / "run")], capsys)


def test_missing_cifar_offline_says_where_to_put_it(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    err = error_of(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing" / "data"), "--arch",
                    "tiny", "--device", "cpu", "--out", str(tmp_path / "run")], capsys)
    assert str(tmp_path / "nothing" / "data") in err and "cifar-10" in err
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "run").exists()  # no mistyped tree left


def test_corrupt_cifar_file_is_named(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"not a pickle")
    err = error_of(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--arch", "tiny",
                    "--device", "cpu", "--out", str(tmp_path / "run")], capsys)
    assert "data_batch_1" in err


@pytest.mark.parametrize("array, problem", [
    (np.zeros((10, 32, 32), np.uint8), "shape"),
    (np.zeros((10, 32, 32, 3), np.float32), "uint8"),
])
def test_bad_out_distribution_array_is_named(tmp_path, capsys, array, problem):
    path = tmp_path / "out.npy"
    np.save(path, array)
    err = error_of(FAST + ["--out-data", str(path), "--out", str(tmp_path / "run")], capsys)
    assert str(path) in err and problem in err


def test_missing_out_distribution_file_is_named(tmp_path, capsys):
    path = tmp_path / "300K_random_images.npy"
    err = error_of(FAST + ["--out-data", str(path), "--out", str(tmp_path / "run")], capsys)
    assert str(path) in err


def test_an_undecodable_image_in_an_out_data_folder_stops_the_run_before_its_first_step(tmp_path, capsys):
    """A streaming loader decodes a folder batch by batch, possibly hours in: the folder is checked
    when the run opens it instead, or its bad images are left out with --skip-bad-images."""
    from PIL import Image

    folder = tmp_path / "outliers"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "39.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    run = tmp_path / "run"
    argv = FAST + ["--out-data", str(folder), "--loader", "torch", "--epochs", "1", "--out", str(run)]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and "starting:" not in out and err.count("\n") == 1
    assert err.startswith(f"ratio-fast: error: --out-data {folder}: 1 of 40 images cannot be decoded, e.g. "
                          f"{folder / '39.png'}: cannot decode as an image")
    assert "--skip-bad-images" in err and not run.exists()
    code, out, err = run_cli(argv + ["--skip-bad-images", "--max-steps", "2"], capsys)
    assert code == 0, err
    assert f"note: --out-data {folder}: leaving out 1 of 40 images that cannot be decoded" in err


def test_checkpoint_problems(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(FAST + ["--epochs", "1", "--max-steps", "1", "--out", str(run)], capsys)[0] == 0
    # starting over an existing run needs --resume
    assert "--resume" in error_of(FAST + ["--out", str(run)], capsys)
    # a checkpoint of another architecture
    err = error_of([a if a != "tiny" else "resnet18" for a in FAST] + ["--out", str(run), "--resume"], capsys)
    assert "tiny" in err and "resnet18" in err
    # a missing and a truncated checkpoint
    assert "no such file" in error_of(FAST + ["--out", str(run), "--resume", str(tmp_path / "nope.pt")], capsys)
    broken = tmp_path / "broken.pt"
    broken.write_bytes((run / "checkpoint.pt").read_bytes()[:1000])
    assert str(broken) in error_of(FAST + ["--out", str(run), "--resume", str(broken)], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path, capsys):
    assert "--device" in error_of(FAST + ["--device", "cuda", "--out", str(tmp_path / "run")], capsys)


def test_user_error_from_a_real_process_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "ratio_fast.cli", "train", "--arch", "nope", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ratio-fast: error: --arch: unknown architecture 'nope'; choose one of wrn34, wrn28, resnet18, resnet50, tiny"
    ]
