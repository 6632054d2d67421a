"""The whole GPU check in one device call, and the result rows it writes.

    bash bench/device_command.sh <commit>                  # the device command (README "GPU check")
    python3 bench/gpu_check.py --out DIR --commit <sha>    # what it runs
    python3 bench/gpu_check.py convert benchmark-*.json --out bench/results --commit <sha>

`run` (the default) goes through STAGES in order, the most valuable work first. Each stage is a
process group of its own with a deadline: the sum of the caps of the stages so far, counted from
the start, so a stage gets at least its own cap, time a stage leaves unused goes to the next
ones, and the whole run never takes longer than the sum of the caps (TOTAL_CAP_S). A stage past
its deadline is killed with its group; so is a stage whose check is gone, however the check ended
(see `lead`): nothing of the check outlives it.

A device call brings back the last 12,000 characters of its output and at most 8 files of $OUT,
so the run leaves four files there, none in a folder:
    preflight.txt        nvidia-smi -L (bench/device_command.sh writes it)
    rows.jsonl           every row, appended and fsynced the moment it is made: loaded as a pytest
                         plugin (`-p gpu_check`) this module appends each benchmark's row as soon
                         as the case is measured, and the run one row per stage when it ends
    <date>-<gpu>.jsonl   the same rows once the run ends, for bench/results/
    gpu_check.log        every stage's output, one after the other, each under a header
JUnit XML, the build directory and the measurement caches go to a temporary folder. Before its
one-screen table (`table`, last), the run prints the last lines of each failed stage's log and
the one-line reason of each failed case, so the output's tail alone says what broke.

Exit code: 0 every case passed; 1 some case (or the build) failed; 3 no case failed but a stage
reached its deadline or the run was stopped. 124 stays the outer `timeout`'s: the call ran out.

A benchmark row has case, gpu, torch, triton, date, commit, the times in seconds (median_s,
mean_s, min_s, max_s, stddev_s, rounds) and the case's extra_info (bench/results/README.md).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
STAT_FIELDS = ("median", "mean", "min", "max", "stddev")
ROWS_ENV = "RATIO_FAST_BENCH_ROWS"  # where the plugin appends rows
COMMIT_ENV = "RATIO_FAST_COMMIT"
LIB_DIR_ENV = "RATIO_FAST_NATIVE_LIB_DIR"  # where the build stage puts the libraries (default ratio_fast/ops)
NO_TESTS_COLLECTED = 5  # pytest's exit code when nothing is selected
PROVENANCE = ("gpu", "gpu_arch", "torch", "triton", "cuda")  # machine() fields every row carries (gpu_arch: GPUs only)

# The files of $OUT besides <date>-<gpu>.jsonl (the device call brings back at most 8).
PREFLIGHT, ROWS, LOG = "preflight.txt", "rows.jsonl", "gpu_check.log"

# The check's exit codes, and a stage's code in its row and in the table.
PASSED, FAILED, DEADLINE = 0, 1, 3
OUTCOMES = {PASSED: "passed", FAILED: "failed", DEADLINE: "deadline", None: "stopped"}
LOG_TAIL_LINES = 25  # of a failed stage's log, printed before the table
MAX_REASONS = 20  # failed cases listed per stage (all of them are in gpu_check.log)
MAX_LINE = 200  # characters of a printed log line or reason
COUNTS = ("passed", "failed", "errors", "skipped")  # a stage row's counts of cases, from its JUnit XML

RATIO = "bench/test_bench_ratio_step.py"
HEADLINE_CASES = ("no-compile", "fast")  # the engine cases of the ratio-step stage; compile last, it takes longest
KERNEL_TESTS = ("tests/test_native.py", "tests/test_ops.py",  # the CUDA library and Triton kernels against their references
                "tests/test_gpu.py::test_triton_pgd_step_matches_reference_on_cuda",
                "tests/test_gpu.py::test_triton_random_start_matches_reference_on_cuda")


@dataclass(frozen=True)
class Stage:
    name: str
    cap_s: float
    why: str  # what the cap is sized for
    pytest_args: tuple[str, ...] = ()  # none: the native build


STAGES = (
    Stage("native-build", 60, "nvcc for sm_90 and g++ on 3 + 3 sources: 30-50 s on 2 shared cores here, room for "
                              "a second build without -Werror on the GPU machine's 16"),
    Stage("kernel-tests", 60, "86 small cases; each Triton specialization compiles once (about 1 s)",
          ("-m", "gpu", *KERNEL_TESTS)),
    Stage("pgd-step", 45, "12 memory-bound cases of 30 rounds; the 3 torch.compile cases (one small graph each) "
                          "come last", ("bench/test_bench_pgd_step.py::test_pgd_step_gpu",)),
    Stage("ratio-step", 150, "the headline: reference and no-compile take seconds, the fast case's first step "
                             "compiles WRN-34-10 (README: cold start)",
          (f"{RATIO}::test_ratio_step_gpu_reference", *(f"{RATIO}::test_ratio_step_gpu[{case}]" for case in HEADLINE_CASES))),
    Stage("gpu-tests", 80, "24 cases, a few of which compile or capture a tiny model",
          ("-m", "gpu", "tests/", *(f"--deselect={test}" for test in KERNEL_TESTS))),
    Stage("loaders", 20, "6 cases (3 loaders x 2 augmentations; DALI skips there), 6 rounds of a few batches",
          ("bench/test_bench_loaders.py::test_loader_cuda",)),
    Stage("speed-switches", 35, "whatever time is left: 10 cases (L-infinity first), each compiling its own variant, "
                                "then one per training type (reference and engine, no compile); repeat them in a "
                                "second call with --stages speed-switches",
          (f"{RATIO}::test_ratio_step_gpu", f"--deselect={RATIO}::test_ratio_step_gpu_reference",
           *(f"--deselect={RATIO}::test_ratio_step_gpu[{case}]" for case in HEADLINE_CASES))),
)
TOTAL_CAP_S = sum(stage.cap_s for stage in STAGES)
MIN_STAGE_S = 5  # a stage with less time left than this is not started


# ---- rows -----------------------------------------------------------------------------------

@functools.cache
def machine() -> dict:
    """What the rows ran on: GPU (or CPU) name, its architecture, torch, triton and CUDA versions."""
    import platform

    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {"torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return {"gpu": torch.cuda.get_device_name(0), "gpu_arch": f"sm{major}{minor}", **info}
    return {"gpu": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)", **info}


def benchmark_row(bench: dict, common: dict) -> dict:
    """The row of one benchmark (pytest-benchmark's dict of it) with the run's common fields."""
    stats = bench["stats"]
    row = dict(bench.get("extra_info", {}))  # first, so it cannot overwrite the fields below
    row.update(case=_case_name(bench), group=bench.get("group"), **common)
    row.update({f"{name}_s": stats[name] for name in STAT_FIELDS})
    row["rounds"] = stats["rounds"]
    return row


def rows_from_benchmark_json(data: dict, commit: str | None = None) -> list[dict]:
    """One row per benchmark in a pytest-benchmark JSON document."""
    info = data.get("machine_info", {})
    common = {**{k: info[k] for k in PROVENANCE if k in info},
              "gpu": info.get("gpu") or info.get("cpu", {}).get("brand_raw") or "unknown",
              "date": data.get("datetime", ""),
              "commit": commit or (data.get("commit_info") or {}).get("id") or "unknown"}
    return [benchmark_row(bench, common) for bench in data.get("benchmarks", [])]


def rows_from_file(path: Path, commit: str | None = None) -> list[dict]:
    """Rows of a pytest-benchmark JSON file; none if it is missing or empty (no case ran)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    return rows_from_benchmark_json(json.loads(text), commit) if text.strip() else []


def _case_name(bench: dict) -> str:
    """'test_bench_ratio_step::test_ratio_step_gpu[fast]': the file stem keeps names unique across files."""
    fullname = bench.get("fullname", bench["name"])
    path, _, name = fullname.rpartition("::")
    return f"{Path(path).stem}::{name}" if path else name


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows as JSON lines and push them to disk now: a process killed next keeps them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; a line cut short by a kill is dropped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def results_file_name(rows: list[dict]) -> str:
    """<date>-<gpu>.jsonl, e.g. 2025-07-01-nvidia-h100-80gb-hbm3.jsonl, from the first row that has a GPU."""
    first = next((row for row in rows if row.get("gpu")), rows[0] if rows else {})
    date = str(first.get("date", ""))[:10] or time.strftime("%Y-%m-%d")
    gpu = re.sub(r"[^a-z0-9]+", "-", str(first.get("gpu", "unknown")).lower()).strip("-")
    return f"{date}-{gpu}.jsonl"


def write_rows(rows: list[dict], out_dir: Path) -> Path:
    path = Path(out_dir) / results_file_name(rows)
    path.unlink(missing_ok=True)
    append_rows(path, rows)
    return path


def table(rows: list[dict]) -> str:
    """case | time | img/s | speedup vs reference | MFU or % of HBM, one line per measured case,
    then one line per stage."""
    lines = [f"{'case':52} {'time':>10} {'img/s':>8} {'speedup':>8} {'MFU/HBM':>9}"]
    for row in rows:
        if "median_s" not in row:
            continue
        seconds = row["us_per_step"] * 1e-6 if "us_per_step" in row else row["median_s"]
        shown = f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"
        imgs = f"{row['images_per_s']:.0f}" if row.get("images_per_s") else ""
        speedup = f"{row['speedup_vs_reference']:.2f}x" if row.get("speedup_vs_reference") else ""
        util = (f"{100 * row['mfu']:.1f}% MFU" if row.get("mfu") is not None
                else f"{100 * row['hbm_fraction']:.0f}% HBM" if row.get("hbm_fraction") is not None else "")
        case = row["case"].replace("test_bench_", "").replace("::test_", "::")
        lines.append(f"{case[:52]:52} {shown:>10} {imgs:>8} {speedup:>8} {util:>9}")
    for row in rows:
        if "stage" in row:
            counts = ", ".join(f"{row[k]} {k}" for k in COUNTS if row.get(k))
            code = row["exit_code"]
            lines.append(f"stage {row['stage']:15} exit {'-' if code is None else code} {OUTCOMES.get(code, '?'):8} "
                         f"{row['seconds']:4.0f} s (deadline {row['deadline_s']:.0f} s)  {counts}")
    return "\n".join(lines)


def junit_failures(junit_xml: Path) -> list[str]:
    """'<test>: <reason>' for each failed or broken case of a pytest --junitxml file, one line each."""
    try:
        root = ET.parse(junit_xml).getroot()
    except (OSError, ET.ParseError):
        return []
    failures = []
    for case in root.iter("testcase"):
        for problem in case:
            if problem.tag in ("failure", "error"):
                name = "::".join(filter(None, (case.get("classname"), case.get("name"))))
                reason = (problem.get("message") or problem.text or problem.tag).strip().splitlines()
                failures.append(f"{name}: {reason[0] if reason else problem.tag}")
    return failures


def junit_counts(junit_xml: Path) -> dict:
    """passed / failed / errors / skipped of a pytest --junitxml file (all zero if it is missing)."""
    counts = dict.fromkeys(COUNTS, 0)
    try:
        root = ET.parse(junit_xml).getroot()
    except (OSError, ET.ParseError):
        return counts
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        key = ("failed" if "failure" in kinds else "errors" if "error" in kinds
               else "skipped" if "skipped" in kinds else "passed")
        counts[key] += 1
    return counts


# ---- the plugin: a row per measured case, at once ---------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """After a benchmark's test body passed, append its row to $RATIO_FAST_BENCH_ROWS."""
    outcome = yield
    path = os.environ.get(ROWS_ENV)
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    if call.when != "call" or not path or fixture is None or getattr(fixture, "stats", None) is None:
        return
    if outcome.get_result().passed:
        common = {**{k: v for k, v in machine().items() if k in PROVENANCE},
                  "commit": os.environ.get(COMMIT_ENV, "unknown"),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        append_rows(Path(path), [benchmark_row(fixture.stats.as_dict(include_data=False), common)])


# ---- the run --------------------------------------------------------------------------------

class Interrupted(Exception):
    """SIGTERM or SIGHUP (the device command's outer timeout, a closed call): stop, keep what
    was measured, print the table."""


def _on_signal(signum, frame):
    raise Interrupted()


def lead(command: list[str]) -> NoReturn:
    """A stage's first process, the leader of its process group: runs `command` in that group and
    exits with its exit code. Its stdin is a pipe from the check; should that reach its end while
    the command runs (the check exited or was killed, SIGKILL included), it kills the whole group,
    itself with it, so no stage outlives its check."""
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def kill_group_when_the_check_is_gone():
        while os.read(0, 4096):  # b"" at the end
            pass
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=kill_group_when_the_check_is_gone, daemon=True).start()
    code = child.wait()
    # os._exit: the watching thread still blocks in its read, which a normal exit would wait on.
    os._exit(code if code >= 0 else 128 - code)  # killed by a signal: the shell's convention


# A new process group in the check's session (not a new session): process_group=0 from Python 3.11.
NEW_PROCESS_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def run_capped(command: list[str], log: Path, seconds: float, env: dict | None = None) -> int | None:
    """Run `command` (output appended to `log`) as a process group of its own, led by `lead`; its
    exit code, or None if it was still running at `seconds` and was killed with its group. A check
    stopped meanwhile (Interrupted) kills the group too. Whatever the group left running is killed."""
    with open(log, "a") as out:
        print("$", " ".join(command), file=out, flush=True)
        process = subprocess.Popen([sys.executable, __file__, "lead", *command], cwd=ROOT, env=env,
                                   stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, **NEW_PROCESS_GROUP)
        try:
            return process.wait(timeout=max(seconds, 0.1))
        except subprocess.TimeoutExpired:
            out.write(f"\ngpu_check: killed after {seconds:.0f} s (the stage's deadline)\n")
            return None
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # the group ended with its command
                pass
            process.stdin.close()
            process.wait()


@dataclass
class StageResult:
    code: int | None  # PASSED, FAILED, DEADLINE; None: the check was stopped during the stage
    seconds: float = 0.0
    counts: dict = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))  # of its JUnit XML
    report: list[str] = field(default_factory=list)  # printed before the table: what broke


def tail(log: Path, offset: int, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of `log` after byte `offset` (one stage's part of it), each cut to MAX_LINE."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [line[:MAX_LINE] for line in text.splitlines()[-lines:]]


def preflight_gpus(out: Path) -> list[str]:
    """The GPUs nvidia-smi -L listed in preflight.txt ('GPU 0: NVIDIA H200 (UUID: ...)'); none without it."""
    try:
        return [line for line in (out / PREFLIGHT).read_text().splitlines() if line.startswith("GPU ")]
    except OSError:
        return []


def cuda_library() -> Path:
    """Where the build stage puts the CUDA library (ratio_fast.ops.native names it; the device copy is
    not installed, so this tree's package is imported)."""
    sys.path.insert(0, str(ROOT))
    from ratio_fast.ops import native

    name = native.library_path("cuda").name
    return Path(os.environ.get(LIB_DIR_ENV) or native.LIBRARY_DIR) / name


def build_native(log: Path, seconds: float, scratch: Path, out: Path) -> StageResult:
    """CMake-build kernels/ for sm_90 with warnings as errors, in a fresh build directory (the
    device copy of the tree has no build outputs; a reused one would hide a broken build). If
    that fails, build once more without -Werror, so the later stages still have the libraries,
    and fail the stage. Fail it too if nvidia-smi listed a GPU and no CUDA library was built."""
    began, build = time.monotonic(), scratch / "native-build"
    lib_dir = os.environ.get(LIB_DIR_ENV)

    def configure_and_build(werror: bool) -> int | None:
        configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                     f"-DRATIO_FAST_WERROR={'ON' if werror else 'OFF'}", "-DCMAKE_CUDA_ARCHITECTURES=90",
                     *(["-G", "Ninja"] if shutil.which("ninja") else []),
                     *([f"-DRATIO_FAST_LIB_DIR={lib_dir}"] if lib_dir else [])]
        code = run_capped(configure, log, seconds - (time.monotonic() - began))
        if code == 0:
            code = run_capped(["cmake", "--build", str(build), "--parallel", str(os.cpu_count() or 1)], log,
                              seconds - (time.monotonic() - began))
        return code

    offset = log.stat().st_size
    code, report = configure_and_build(werror=True), []
    if code not in (0, None):
        report += ["the -Werror build failed; its last lines:", *tail(log, offset),
                   "built once more without -Werror, so that the later stages have the libraries"]
        print("gpu_check: the -Werror build failed; building once more without -Werror", flush=True)
        code = configure_and_build(werror=False)
        code = FAILED if code is not None else None
    if code is None:
        return StageResult(DEADLINE, report=report)
    if preflight_gpus(out) and not (library := cuda_library()).exists():
        code = FAILED
        report.append(f"nvidia-smi lists a GPU, but {library} was not built (is nvcc on PATH?)")
    return StageResult(PASSED if code == 0 else FAILED, report=report)


def run_pytest(stage: Stage, log: Path, seconds: float, scratch: Path, env: dict) -> StageResult:
    junit = scratch / f"{stage.name}.xml"
    command = [sys.executable, "-m", "pytest", *stage.pytest_args, "-p", "gpu_check", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", "-v", "-rfEs", f"--junitxml={junit}"]
    if any(arg.startswith("bench/") for arg in stage.pytest_args):
        command.append("--benchmark-only")
    code = run_capped(command, log, seconds, env)
    result = StageResult(DEADLINE if code is None else PASSED if code in (0, NO_TESTS_COLLECTED) else FAILED,
                         counts=junit_counts(junit))
    failures = junit_failures(junit)
    result.report = [line[:MAX_LINE] for line in failures[:MAX_REASONS]]
    if len(failures) > MAX_REASONS:
        result.report.append(f"... and {len(failures) - MAX_REASONS} more failed cases (gpu_check.log)")
    return result


def run_stage(stage: Stage, out: Path, scratch: Path, seconds: float, env: dict) -> StageResult:
    """One stage, its output appended to gpu_check.log under a header; its report says what broke."""
    log = out / LOG
    with open(log, "a") as f:
        f.write(f"\n===== {stage.name}: up to {seconds:.0f} s (cap {stage.cap_s:.0f} s: {stage.why}) =====\n")
    offset, began = log.stat().st_size, time.monotonic()
    if stage.pytest_args:
        result = run_pytest(stage, log, seconds, scratch, env)
    else:
        result = build_native(log, seconds, scratch, out)
    result.seconds = time.monotonic() - began
    if result.code != PASSED:
        result.report += [f"last lines of its log ({LOG}):", *tail(log, offset)]
    return result


def check_exit_code(codes: list[int | None]) -> int:
    """1 if a stage failed; else 3 if one reached its deadline or the check was stopped (None); else 0."""
    if FAILED in codes:
        return FAILED
    return DEADLINE if any(code != PASSED for code in codes) else PASSED


def run(args) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / ROWS
    for name in (ROWS, LOG):  # this run's rows and log only
        (out / name).unlink(missing_ok=True)
    (out / LOG).touch()
    names = args.stages.split(",") if args.stages else [stage.name for stage in STAGES]
    unknown = sorted(set(names) - {stage.name for stage in STAGES})
    if unknown:
        print(f"gpu_check: --stages: no stage {', '.join(unknown)}; the stages are "
              f"{','.join(stage.name for stage in STAGES)}", file=sys.stderr)
        return 2
    chosen = [stage for stage in STAGES if stage.name in names]
    date = datetime.datetime.now(datetime.timezone.utc).isoformat()
    handlers = {signum: signal.signal(signum, _on_signal) for signum in (signal.SIGTERM, signal.SIGHUP)}
    began, deadline, codes, reports = time.monotonic(), 0.0, [], []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:  # JUnit XML, build, caches
        scratch = Path(scratch)
        env = {**os.environ, ROWS_ENV: str(rows_path), COMMIT_ENV: args.commit,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(BENCH), os.environ.get("PYTHONPATH")])),
               # tests/conftest.py would pick Triton's interpreter; on a GPU the compiled kernels are checked.
               "TRITON_INTERPRET": "0",
               "RATIO_FAST_CACHE_DIR": str(scratch / "cache")}  # the 'auto' choices are measured in this run
        try:
            for stage in chosen:
                deadline += stage.cap_s
                seconds = deadline - (time.monotonic() - began)
                result = StageResult(None)
                try:
                    if seconds < MIN_STAGE_S:
                        print(f"gpu_check: no time left for {stage.name}", flush=True)
                        result = StageResult(DEADLINE)
                    else:
                        print(f"== {stage.name} (up to {seconds:.0f} s)", flush=True)
                        result = run_stage(stage, out, scratch, seconds, env)
                finally:  # interrupted too (exit_code None): the row says how far the stage got
                    row = {"case": f"stage:{stage.name}", "stage": stage.name, "exit_code": result.code,
                           "cap_s": stage.cap_s, "deadline_s": round(seconds, 1), "seconds": round(result.seconds, 1),
                           "commit": args.commit, "date": date, **result.counts}
                    append_rows(rows_path, [row])
                codes.append(result.code)
                print(f"   {stage.name}: {OUTCOMES[result.code]} in {result.seconds:.0f} s", flush=True)
                if result.report:
                    reports.append((stage.name, result.report))
        except (Interrupted, KeyboardInterrupt):
            print("gpu_check: stopped by a signal; writing what was measured", flush=True)
            codes.append(None)
        for signum in (signal.SIGTERM, signal.SIGHUP):  # a second of work left: finish it (timeout's -k still applies)
            signal.signal(signum, signal.SIG_IGN)
    rows = read_rows(rows_path)
    measured = next((row for row in rows if "stage" not in row), None)  # saves importing torch here
    provenance = {k: v for k, v in (measured or machine()).items() if k in PROVENANCE}
    for row in rows:
        if "stage" in row:
            row.update(provenance)
    for name, report in reports:
        print(f"\n---- {name}: what broke", *report, sep="\n", flush=True)
    print(f"\nrows: {write_rows(rows, out)}\n\n{table(rows)}", flush=True)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    return check_exit_code(codes)


def convert(args) -> int:
    rows = [row for name in args.benchmark_json for row in rows_from_file(Path(name), args.commit)]
    path = write_rows(rows, Path(args.out))
    print(f"rows: {path}")
    print(table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lead"]:
        lead(argv[1:])  # never returns
    if argv[:1] == ["convert"]:
        p = argparse.ArgumentParser(prog="gpu_check.py convert", description="pytest-benchmark JSON -> result rows")
        p.add_argument("benchmark_json", nargs="+", help="pytest-benchmark JSON files (their rows are joined)")
        p.add_argument("--out", default=str(BENCH / "results"), help="folder for <date>-<gpu>.jsonl")
        p.add_argument("--commit", default=None, help="commit id for the rows (default: the JSON's commit_info)")
        return convert(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="gpu_check.py", description="native build, GPU tests, benchmarks, in one call")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="where results go (default $OUT)")
    p.add_argument("--commit", default="unknown", help="commit id for the rows (the device copy has no .git)")
    p.add_argument("--stages", default=None,
                   help=f"comma-separated subset of {','.join(s.name for s in STAGES)} (a second call, say)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
