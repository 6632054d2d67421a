"""What a package needs before anyone can reuse it: a license said in one place, --version from the
package, --workers for the streaming loaders, help text whose list defaults read as flags take them."""
import subprocess
import sys
from pathlib import Path

import pytest

import ratio_fast
from ratio_fast.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def setup_py(*args: str) -> str:
    return subprocess.run([sys.executable, "setup.py", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


def test_license_file_and_setup_agree():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the ratio-fast authors" in text
    assert setup_py("--license") == "MIT"


def test_version_comes_from_the_package(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"ratio-fast {ratio_fast.__version__}\n"
    assert setup_py("--version") == ratio_fast.__version__


def test_no_list_default_reads_as_a_python_list():
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    for name, sub in subcommands.items():
        assert "(default: [])" not in sub.format_help() and "(default: ()" not in sub.format_help(), name
    help_text = " ".join(subcommands["train"].format_help().split())
    assert "for several lists (configs/ratio-cifar10-wrn34.json) (default: none)" in help_text


def test_workers_reach_the_torch_loader(tmp_path, capsys):
    from ratio_fast import TrainConfig
    from ratio_fast.cli.run import Run

    config = TrainConfig(dataset="synthetic", arch="tiny", device="cpu", synthetic_size=64, batch_size=32,
                         steps_in=1, steps_out=1, eval_samples=0, epochs=1, loader="torch", workers=0)
    run = Run(config, tmp_path / "run", log=sys.stdout)
    try:
        assert run.train_loader.workers == 0 and run.out_loader.workers == 0
    finally:
        run.fit()  # 2 steps in this process (no worker processes); releases the run directory
    assert "done: 2 steps" in capsys.readouterr().out
    assert main(["train", "--dataset", "synthetic", "--workers", "-1"]) == 2
    assert capsys.readouterr().err == "ratio-fast: error: --workers must be an integer >= 0, got -1\n"
