"""The GPU check (bench/gpu_check.py, bench/device_command.sh) without a GPU.

The dry run is the GPU machine minus the GPU: the README's one command, run as written, in a
copy of the tree as the device tool makes it (tracked files and untracked ones git does not
ignore; no .git, no build outputs), with every installed distribution the machine's image lacks
made unimportable (tests/gpu_image.py: the image's ../shared/gpu-image/packages.txt when there is
one, else the packages known to be absent there, pyautoattack, nvidia-dali and torchattacks, which
is what CI sees: its `pip install -e ".[dev]"` installs pyautoattack, so the hiding has something
to hide). It does everything the GPU machine does up to the GPU work itself: the same CMake build
(sm_90, warnings as errors, a fresh build directory) into the copy, then every stage's pytest
process, whose GPU cases all skip with a reason. So a change that would break the device call (a
renamed benchmark case, a test module that no longer imports there, a kernel that no longer
builds) breaks here. The one difference: OUT is a temporary folder.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import gpu_image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_command.sh"
CALL_TIMEOUT_S = 540  # the timeout_s the README tells the device call to give the command
STAGE_CAPS_S = 450  # what the stages may take together (issue 20)
COMMAND_LIMIT_CHARS = 2000  # the device tool's limit on a command
MAX_OUT_FILES = 5  # of the 8 files a call brings back, with room to spare
SKIP_REASONS = ("needs a CUDA device", "is not installed")  # a GPU case; a module whose package the image lacks
STAGE_ORDER = ("native-build", "kernel-tests", "pgd-step", "ratio-step", "gpu-tests", "loaders", "speed-switches")


def readme_device_command() -> str:
    """The README's device command: its one line that runs bench/device_command.sh."""
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()
             if line.strip().startswith("bash bench/device_command.sh")]
    assert len(lines) == 1, lines
    return lines[0]


def device_copy(dest: Path) -> Path:
    """The tree as the device tool copies it: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # not a deleted file still in the index
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def out_files(out: Path) -> list[str]:
    """What a call would bring back of OUT: its file names, a results file <date>-<machine>.jsonl as
    RESULTS; a folder as FOLDER."""
    return sorted("FOLDER" if not path.is_file() else "RESULTS" if re.fullmatch(r"\d{4}-\d\d-\d\d-.+\.jsonl", path.name)
                  else path.name for path in out.iterdir())


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()  # a zombie is dead, just not reaped yet
    except FileNotFoundError:
        return False


def wait_until_dead(*pids: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:  # SIGKILL is delivered, not awaited
        time.sleep(0.05)
    return not any(alive(pid) for pid in pids)


# ---- the dry run ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, bench_module):
    base = tmp_path_factory.mktemp("dry_run")
    tree, out, hidden = device_copy(base / "tree"), base / "out", base / "hidden"
    out.mkdir()
    hiding = gpu_image.hiding(hidden, gpu_image.packages_list(ROOT))
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    env.pop(bench_module("gpu_check").LIB_DIR_ENV, None)  # the build goes into the copy, as on the device
    command = readme_device_command().replace("<commit>", "dryrun1")
    done = subprocess.run(["bash", "-c", command], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=CALL_TIMEOUT_S + 60)
    collected = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/", "--collect-only", "-q",
                                "-p", "no:cacheprovider"], cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    gpu_cases = int(re.search(r"(\d+)/\d+ tests collected", collected.stdout).group(1))
    return bench_module("gpu_check"), done, tree, out, hiding, gpu_cases


@pytest.mark.slow
def test_the_dry_run_builds_collects_every_gpu_case_and_skips_each_with_a_reason(dry_run):
    gpu_check, done, tree, out, hiding, gpu_cases = dry_run
    assert "pyautoattack" in hiding["distributions"]  # in CI too: .[dev] installs it
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    stages = {row["stage"]: row for row in gpu_check.read_rows(out / "rows.jsonl") if "stage" in row}
    assert list(stages) == [stage.name for stage in gpu_check.STAGES]
    for stage in gpu_check.STAGES:
        row = stages[stage.name]
        assert row["exit_code"] == 0 and row["commit"] == "dryrun1", row
        if stage.pytest_args:  # every case collected, none run, none broken
            assert row["skipped"] > 0 and row["passed"] == row["failed"] == row["errors"] == 0, row
    # The kernel tests and the other GPU tests together are every GPU case of tests/ (and the
    # modules skipped whole, such as test_attacks_apgd_autoattack.py without pyautoattack).
    assert stages["kernel-tests"]["skipped"] + stages["gpu-tests"]["skipped"] >= gpu_cases >= 100
    log = (out / "gpu_check.log").read_text()
    reasons = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", log, flags=re.M)
    assert reasons and all(any(known in reason for known in SKIP_REASONS) for reason in reasons), set(reasons)
    assert "-DRATIO_FAST_WERROR=ON" in log
    assert (tree / "ratio_fast" / "ops" / "libratio_fast_cpu.so").exists()
    nvcc = shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists()
    assert (tree / "ratio_fast" / "ops" / "libratio_fast_cuda.so").exists() == bool(nvcc)
    assert done.stdout.rstrip().splitlines()[-1].startswith("stage speed-switches")  # the table comes last


@pytest.mark.slow
def test_the_dry_run_leaves_four_files_in_out_none_in_a_folder(dry_run):
    gpu_check, done, tree, out, hiding, gpu_cases = dry_run
    assert out_files(out) == ["RESULTS", "gpu_check.log", "preflight.txt", "rows.jsonl"]
    assert len(out_files(out)) <= MAX_OUT_FILES
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {stage.name}: " in log for stage in gpu_check.STAGES)  # each stage's part under its header


# ---- what the image has --------------------------------------------------------------------

HIDDEN_PROBE = textwrap.dedent("""
    import importlib, importlib.metadata as metadata, importlib.util, json, sys
    name, module = sys.argv[1], sys.argv[2]
    try:
        importlib.import_module(module)
        imported = "imported"
    except ModuleNotFoundError as error:
        imported = type(error).__name__
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        version = None
    listed = sorted({dist.metadata.get("Name") for dist in metadata.distributions()})
    entry_points = sorted({ep.dist.metadata.get("Name") for group in ("console_scripts", "pytest11")
                           for ep in metadata.entry_points(group=group) if ep.dist is not None})
    print(json.dumps({"imported": imported, "spec": importlib.util.find_spec(module.split(".")[0]) is not None, "version": version,
                      "listed": listed, "entry_points": entry_points}))
""")


def probe(hidden: Path, name: str, module: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", HIDDEN_PROBE, name, module], env=env, capture_output=True, text=True,
                          cwd=hidden, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_a_hidden_distribution_is_absent_as_on_the_image_and_the_rest_is_not(tmp_path):
    """With a packages.txt listing every installed distribution but pyautoattack, spelt as
    PEP 503 allows (case, '-', '_', '.'), pyautoattack alone goes, its metadata with it."""
    from importlib.metadata import distributions

    installed = {dist.metadata.get("Name") for dist in distributions()} - {None}
    assert "pyautoattack" in {gpu_image.normalized(name) for name in installed}  # a dev dependency
    respelt = [name.upper().replace("-", "_") if i % 2 else name.replace("_", ".") for i, name in enumerate(sorted(installed))]
    listing = tmp_path / "packages.txt"
    listing.write_text("# the image\n" + "\n".join(name for name in respelt if gpu_image.normalized(name) != "pyautoattack"))
    hiding = gpu_image.hiding(tmp_path / "hidden", listing)
    assert hiding["distributions"] == ["pyautoattack"] and hiding["modules"] == ["pyautoattack"]

    gone = probe(tmp_path / "hidden", "pyautoattack", "pyautoattack.autopgd_base")
    assert gone["imported"] == "ModuleNotFoundError" and gone["version"] is None
    assert gone["spec"] is False  # find_spec("pyautoattack") is None
    assert "pyautoattack" not in {gpu_image.normalized(name) for name in gone["listed"] + gone["entry_points"]}
    for name, module in (("typing-extensions", "typing_extensions"), ("pytest", "pytest"), ("ratio-fast", "ratio_fast")):
        kept = probe(tmp_path / "hidden", name, module)
        assert kept["imported"] == "imported" and kept["spec"] and kept["version"], (name, kept)


def test_without_the_list_the_packages_known_to_be_absent_are_hidden():
    installed = {"pyautoattack", "nvidia-dali-cuda130", "torchattacks", "torch", "ratio-fast", "nvidia-cublas"}
    assert gpu_image.absent_distributions(installed, None) == {"pyautoattack", "nvidia-dali-cuda130", "torchattacks"}
    assert gpu_image.absent_distributions(installed, {"torch"}) == installed - {"torch", "ratio-fast"}  # the project stays


def test_names_compare_as_pep_503_says():
    assert {gpu_image.normalized(name) for name in ("Typing_Extensions", "typing.extensions", "typing--extensions")} \
        == {"typing-extensions"}


def test_a_namespace_shared_with_present_distributions_loses_only_the_absent_parts():
    provides = {"nvidia-dali-cuda130": {"nvidia", "nvidia.dali"}, "nvidia-cublas": {"nvidia", "nvidia.cublas"},
                "pyautoattack": {"pyautoattack", "pyautoattack.autopgd_base"}, "torch": {"torch", "torch.nn"}}
    assert gpu_image.hidden_modules(provides, {"nvidia-dali-cuda130", "pyautoattack"}) == {"nvidia.dali", "pyautoattack"}
    assert gpu_image.hidden_modules(provides, {"nvidia-dali-cuda130", "nvidia-cublas"}) == {"nvidia"}


# ---- the command and its stages -------------------------------------------------------------

def test_the_command_fits_one_device_call(bench_module):
    gpu_check = bench_module("gpu_check")
    command, script, readme = readme_device_command(), SCRIPT.read_text(), (ROOT / "README.md").read_text()
    assert len(command) < COMMAND_LIMIT_CHARS and len(script) < COMMAND_LIMIT_CHARS  # the script could be pasted whole
    assert f"`timeout_s` of at least {CALL_TIMEOUT_S}" in readme
    # Worst case: the preflight's timeout, then the outer timeout and its kill delay; the stages'
    # deadlines (their caps' sum) sit inside the outer timeout with room for the processes to start.
    preflight = int(re.search(r"timeout (\d+) nvidia-smi", script).group(1))
    kill_after, outer = map(int, re.search(r"timeout -k (\d+) (\d+) python3 bench/gpu_check.py", script).groups())
    assert preflight + outer + kill_after <= CALL_TIMEOUT_S
    assert gpu_check.TOTAL_CAP_S <= STAGE_CAPS_S and gpu_check.TOTAL_CAP_S + 20 <= outer


def test_the_stages_come_most_valuable_first_each_cap_with_its_reason(bench_module):
    gpu_check = bench_module("gpu_check")
    assert tuple(stage.name for stage in gpu_check.STAGES) == STAGE_ORDER
    assert gpu_check.STAGES[0].cap_s == 60 and all(stage.why for stage in gpu_check.STAGES)
    by_name = {stage.name: stage for stage in gpu_check.STAGES}
    assert "--continue-on-collection-errors" not in by_name["gpu-tests"].pytest_args  # run_pytest adds it to all
    ratio = [arg.rsplit("::", 1)[1] for arg in by_name["ratio-step"].pytest_args]
    assert ratio == ["test_ratio_step_gpu_reference", "test_ratio_step_gpu[no-compile]", "test_ratio_step_gpu[fast]"]
    for case, source in bench_module("test_bench_ratio_step").SCHEDULE_FROM.items():  # pytest keeps this order
        assert ratio.index(f"test_ratio_step_gpu[{source}]") < ratio.index(f"test_ratio_step_gpu[{case}]")


def test_the_pgd_step_benchmark_runs_its_compiled_cases_last(bench_module):
    gpu_check = bench_module("gpu_check")
    (selection,) = {stage.name: stage for stage in gpu_check.STAGES}["pgd-step"].pytest_args
    listed = subprocess.run([sys.executable, "-m", "pytest", selection, "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT, capture_output=True, text=True).stdout
    cases = re.findall(r"test_pgd_step_gpu\[(.*)\]", listed)
    compiled = [i for i, case in enumerate(cases) if "compiled" in case]
    assert len(cases) == 24 and compiled == list(range(len(cases) - len(compiled), len(cases)))


# ---- failures, deadlines and kills -----------------------------------------------------------

FAKE_TESTS = textwrap.dedent("""
    import os
    import subprocess
    import time

    def test_fine():
        pass

    def test_broken():
        assert 6 * 7 == 43, "the answer moved"

    def test_stuck():
        time.sleep(60)

    def test_spawning():
        child = subprocess.Popen(["sleep", "60"])
        with open(os.environ["PIDS"], "w") as f:
            f.write(f"{os.getpid()} {child.pid}")
        time.sleep(60)
""")


def fake_check(tmp_path, monkeypatch, gpu_check, stages):
    """gpu_check's run over `stages` instead of STAGES: (exit code, OUT)."""
    (tmp_path / "test_fake.py").write_text(FAKE_TESTS)
    monkeypatch.setattr(gpu_check, "STAGES", stages)
    monkeypatch.setattr(gpu_check, "MIN_STAGE_S", 0.5)
    out = tmp_path / "out"
    return gpu_check.main(["--out", str(out), "--commit", "fake"]), out


def test_a_failed_stage_says_what_broke_before_the_table(tmp_path, monkeypatch, capsys, bench_module):
    gpu_check = bench_module("gpu_check")
    fake = str(tmp_path / "test_fake.py")
    code, out = fake_check(tmp_path, monkeypatch, gpu_check, (
        gpu_check.Stage("good", 60, "one case", (f"{fake}::test_fine",)),
        gpu_check.Stage("bad", 60, "two cases", (f"{fake}::test_fine", f"{fake}::test_broken"))))
    printed = capsys.readouterr().out
    assert code == gpu_check.FAILED
    what_broke = printed[printed.index("---- bad: what broke"):printed.index("rows: ")]
    assert "test_fake::test_broken: AssertionError: the answer moved" in what_broke  # the case's reason
    assert "1 failed, 1 passed" in what_broke  # and the last lines of the stage's log
    assert "---- good" not in printed
    table = printed[printed.index("rows: "):].splitlines()
    assert re.match(r"stage good +exit 0 passed", table[-2]) and re.match(r"stage bad +exit 1 failed", table[-1])
    assert out_files(out) == ["RESULTS", "gpu_check.log", "rows.jsonl"]  # no preflight.txt: no device_command.sh


def test_a_stage_at_its_deadline_is_code_3_and_the_next_stage_still_runs(tmp_path, monkeypatch, capsys, bench_module):
    gpu_check = bench_module("gpu_check")
    fake = str(tmp_path / "test_fake.py")
    code, out = fake_check(tmp_path, monkeypatch, gpu_check, (
        gpu_check.Stage("stuck", 4, "a case that sleeps a minute", (f"{fake}::test_stuck",)),
        gpu_check.Stage("after", 60, "one case", (f"{fake}::test_fine",))))
    printed = capsys.readouterr().out
    assert code == gpu_check.DEADLINE
    assert "killed after 4 s (the stage's deadline)" in printed[printed.index("---- stuck: what broke"):]
    rows = {row["stage"]: row for row in gpu_check.read_rows(out / "rows.jsonl")}
    assert rows["stuck"]["exit_code"] == 3 and rows["after"]["exit_code"] == 0 and rows["after"]["passed"] == 1


@pytest.mark.slow
def test_a_werror_failure_builds_again_without_it_and_fails_the_stage(tmp_path, monkeypatch, bench_module):
    """A warning (a macro defined twice) fails the -Werror build only; the libraries are still
    built, the stage fails and says why. A GPU in preflight.txt without a CUDA library fails it too."""
    gpu_check = bench_module("gpu_check")
    monkeypatch.setenv("CXXFLAGS", "-DRATIO_FAST_TWICE=1 -DRATIO_FAST_TWICE=2")  # CMake's initial CMAKE_CXX_FLAGS
    monkeypatch.setenv("CUDACXX", str(tmp_path / "no-nvcc"))  # the CPU library alone: no CUDA compiler
    monkeypatch.setenv(gpu_check.LIB_DIR_ENV, str(tmp_path / "lib"))
    (tmp_path / "preflight.txt").write_text("GPU 0: NVIDIA H200 (UUID: GPU-0)\n")
    (tmp_path / "log").touch()
    result = gpu_check.build_native(tmp_path / "log", 300, tmp_path, tmp_path)
    assert result.code == gpu_check.FAILED and (tmp_path / "lib" / "libratio_fast_cpu.so").exists()
    report = "\n".join(result.report)
    assert "the -Werror build failed" in report and "RATIO_FAST_TWICE" in report
    assert "nvidia-smi lists a GPU, but" in report and "libratio_fast_cuda.so was not built" in report


def test_a_stage_past_its_deadline_is_killed_with_its_children(tmp_path, bench_module):
    gpu_check = bench_module("gpu_check")
    pid_file = tmp_path / "child.pid"
    code = gpu_check.run_capped(["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], tmp_path / "log", 2)
    assert code is None and "killed after 2 s" in (tmp_path / "log").read_text()
    assert wait_until_dead(int(pid_file.read_text()))  # the grandchild went with the group


def started(pids: Path) -> tuple[int, int]:
    """(a stage's process, its child) once the stage has written them to `pids`."""
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(pids.read_text().split()) == 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    stage, child = map(int, pids.read_text().split())
    assert alive(stage) and alive(child)
    return stage, child


def test_a_check_stopped_by_sigterm_kills_its_stage_and_still_writes_its_rows(tmp_path):
    """The outer timeout's SIGTERM: the check kills the running stage, writes its rows and table, exits 3."""
    (tmp_path / "test_fake.py").write_text(FAKE_TESTS)
    pids, out = tmp_path / "pids", tmp_path / "out"
    check = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'bench')!r})
        import gpu_check
        gpu_check.STAGES = (gpu_check.Stage("spawning", 60, "", ({str(tmp_path / 'test_fake.py')!r} + "::test_spawning",)),)
        sys.exit(gpu_check.main(["--out", {str(out)!r}, "--commit", "stopped"]))
    """)], env={**os.environ, "PIDS": str(pids)}, stdout=subprocess.PIPE, text=True)
    stage, child = started(pids)
    check.send_signal(signal.SIGTERM)
    printed, _ = check.communicate(timeout=60)
    assert check.returncode == 3 and "stopped by a signal" in printed
    assert printed.rstrip().splitlines()[-1].startswith("stage spawning  ") and " stopped " in printed.splitlines()[-1]
    assert wait_until_dead(stage, child)
    (row,) = [row for row in map(json.loads, (out / "rows.jsonl").read_text().splitlines())]
    assert row["stage"] == "spawning" and row["exit_code"] is None


def test_a_killed_check_takes_its_stage_with_it(tmp_path):
    """SIGKILL (the outer timeout's last word, or the call's end) leaves the check no say: the
    stage's leader sees its pipe from the check close and kills the stage's group."""
    pids = tmp_path / "pids"
    check = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'bench')!r})
        import gpu_check
        gpu_check.run_capped(["bash", "-c", "sleep 60 & echo $$ $! > {pids}; wait"], {str(tmp_path / 'log')!r}, 60)
    """)])
    stage, grandchild = started(pids)
    check.kill()
    check.wait(timeout=30)
    assert wait_until_dead(stage, grandchild)
