"""The device command, dry-run on a CPU: the README's one command, run as written.

On a machine without CUDA the command does everything the GPU machine does up to the GPU work
itself: the same CMake build (sm_90, warnings as errors, a fresh build directory), then every
stage's pytest process, whose cases all skip with a reason. So a change that would break the
device call (a renamed benchmark case, a test module that no longer imports, a kernel that no
longer builds) breaks here. DALI is hidden, as the GPU machine has none. Two differences, both
outside the command: OUT is a temporary folder, and the libraries go to a temporary folder
(RATIO_FAST_NATIVE_LIB_DIR) instead of over the ones this checkout uses.
"""
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_command.sh"
DEVICE_CALL_LIMIT_S = 8 * 60  # what one device call may take (issue 11)
COMMAND_LIMIT_CHARS = 2000  # the device tool's limit on a command
SKIP_REASONS = ("needs a CUDA device", "nvidia.dali")


def readme_device_command() -> str:
    """The README's device command: its one line that runs bench/device_command.sh."""
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()
             if line.strip().startswith("bash bench/device_command.sh")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, bench_module):
    base = tmp_path_factory.mktemp("dry_run")
    out, lib, no_dali = base / "out", base / "lib", base / "no_dali"
    out.mkdir()
    no_dali.mkdir()
    # As on the GPU machine: `import nvidia.dali` fails, and find_spec finds nothing.
    (no_dali / "sitecustomize.py").write_text('import sys\nsys.modules["nvidia.dali"] = None\n')
    gpu_check = bench_module("gpu_check")
    env = {**os.environ, "OUT": str(out), gpu_check.LIB_DIR_ENV: str(lib),
           "PYTHONPATH": os.pathsep.join([str(no_dali), os.environ.get("PYTHONPATH", "")])}
    command = readme_device_command().replace("<commit>", "dryrun1")
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=DEVICE_CALL_LIMIT_S + 60)
    return gpu_check, done, out, lib


@pytest.mark.slow
def test_every_stage_builds_or_collects_and_skips_with_a_reason(dry_run):
    gpu_check, done, out, lib = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    stages = {row["stage"]: row for row in gpu_check.read_rows(out / "rows.jsonl") if "stage" in row}
    assert list(stages) == [stage.name for stage in gpu_check.STAGES]
    for stage in gpu_check.STAGES:
        row = stages[stage.name]
        assert row["exit_code"] == 0 and row["commit"] == "dryrun1", row
        if stage.pytest_args:  # every case collected, none run, none broken
            assert row["skipped"] > 0 and row["passed"] == row["failed"] == row["errors"] == 0, row
            for skipped in ET.parse(out / f"{stage.name}.xml").getroot().iter("skipped"):
                assert any(reason in skipped.get("message", "") for reason in SKIP_REASONS), skipped.attrib
    assert stages["gpu-tests"]["skipped"] >= 40  # the GPU tests of tests/, not an empty selection
    assert (lib / "libratio_fast_cpu.so").exists()
    nvcc = shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists()
    assert (lib / "libratio_fast_cuda.so").exists() == bool(nvcc)
    assert "-DRATIO_FAST_WERROR=ON" in (out / "native-build.log").read_text()
    assert done.stdout.rstrip().splitlines()[-1].startswith("stage loaders")  # the table comes last


def test_the_command_fits_one_device_call(bench_module):
    gpu_check = bench_module("gpu_check")
    command, script = readme_device_command(), SCRIPT.read_text()
    assert len(command) < COMMAND_LIMIT_CHARS and len(script) < COMMAND_LIMIT_CHARS  # the script could be pasted whole
    # Worst case: the preflight's timeout, then the outer timeout and its kill delay; the stages'
    # deadlines (their caps' sum) sit inside the outer timeout with room for the processes to start.
    preflight = int(re.search(r"timeout (\d+) nvidia-smi", script).group(1))
    kill_after, outer = map(int, re.search(r"timeout -k (\d+) (\d+) python3 bench/gpu_check.py", script).groups())
    assert preflight + outer + kill_after <= DEVICE_CALL_LIMIT_S
    assert gpu_check.TOTAL_CAP_S + 10 <= outer


def test_a_stage_past_its_deadline_is_killed_with_its_children(tmp_path, bench_module):
    gpu_check = bench_module("gpu_check")
    pid_file = tmp_path / "child.pid"
    code = gpu_check.run_capped(["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], tmp_path / "log", 2)
    assert code == 124 and "killed after 2 s" in (tmp_path / "log").read_text()
    status = Path(f"/proc/{int(pid_file.read_text())}/status")

    def alive():
        try:
            return "State:\tZ" not in status.read_text()  # a zombie is dead, just not reaped yet
        except FileNotFoundError:
            return False
    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:  # SIGKILL is delivered, not awaited
        time.sleep(0.05)
    assert not alive()  # the grandchild went with the group
