"""The whole GPU check in one device call, and the result rows it writes.

    bash bench/device_command.sh <commit>                  # the device command (README "GPU check")
    python3 bench/gpu_check.py --out DIR --commit <sha>    # what it runs
    python3 bench/gpu_check.py convert benchmark-*.json --out bench/results --commit <sha>

`run` (the default) goes through STAGES in order, the most valuable work first: the native
build (CMake, sm_90, warnings as errors), the GPU tests (compiled Triton), the RATIO step
(reference, engine without and with compile), the fused PGD step against torch, torch.compile
and the copy floor, each speed switch alone, the loaders. Each stage is a process of its own
with a deadline: the sum of the caps of the stages so far, counted from the start, so a stage
gets at least its own cap, time a stage leaves unused goes to the next ones, and the whole run
never takes longer than the sum of the caps (TOTAL_CAP_S). A stage past its deadline is killed
with its process group.

No result is lost to a cap: loaded as a pytest plugin (`-p gpu_check`) this module appends each
benchmark's row to $RATIO_FAST_BENCH_ROWS as soon as the case is measured, and the run appends
one row per stage when it ends. Under --out:
    rows.jsonl                        every row, in the order they were made
    <date>-<gpu>.jsonl                the same rows once the run ends, for bench/results/
    <stage>.log, <stage>.xml          each stage's output and its JUnit XML
and the run prints a one-screen table last (`table`).

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
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
STAT_FIELDS = ("median", "mean", "min", "max", "stddev")
ROWS_ENV = "RATIO_FAST_BENCH_ROWS"  # where the plugin appends rows
COMMIT_ENV = "RATIO_FAST_COMMIT"
LIB_DIR_ENV = "RATIO_FAST_NATIVE_LIB_DIR"  # where the build stage puts the libraries (default ratio_fast/ops)
NO_TESTS_COLLECTED = 5  # pytest's exit code when nothing is selected
PROVENANCE = ("gpu", "gpu_arch", "torch", "triton", "cuda")  # machine() fields every row carries (gpu_arch: GPUs only)

RATIO = "bench/test_bench_ratio_step.py"
HEADLINE_CASES = ("no-compile", "fast")  # the engine cases of the ratio-step stage; compile last, it takes longest


@dataclass(frozen=True)
class Stage:
    name: str
    cap_s: float
    pytest_args: tuple[str, ...] = ()  # none: the native build


STAGES = (
    Stage("native-build", 90),
    Stage("gpu-tests", 100, ("-m", "gpu", "tests/")),
    Stage("ratio-step", 130, (f"{RATIO}::test_ratio_step_gpu_reference",
                              *(f"{RATIO}::test_ratio_step_gpu[{case}]" for case in HEADLINE_CASES))),
    Stage("pgd-step", 45, ("bench/test_bench_pgd_step.py::test_pgd_step_gpu",)),
    Stage("speed-switches", 60, (f"{RATIO}::test_ratio_step_gpu", f"--deselect={RATIO}::test_ratio_step_gpu_reference",
                                 *(f"--deselect={RATIO}::test_ratio_step_gpu[{case}]" for case in HEADLINE_CASES))),
    Stage("loaders", 20, ("bench/test_bench_loaders.py::test_loader_cuda",)),
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
            counts = ", ".join(f"{row[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if row.get(k))
            lines.append(f"stage {row['stage']:15} exit {str(row['exit_code']):4} {row['seconds']:5.0f} s "
                         f"(deadline {row['deadline_s']:.0f} s)  {counts}")
    return "\n".join(lines)


def junit_counts(junit_xml: Path) -> dict:
    """passed / failed / errors / skipped of a pytest --junitxml file (all zero if it is missing)."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
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
    """SIGTERM (the device command's outer timeout): stop, keep what was measured, print the table."""


def _on_sigterm(signum, frame):
    raise Interrupted()


def run_capped(command: list[str], log: Path, seconds: float, env: dict | None = None) -> int:
    """Run `command` (output appended to `log`) in a process group of its own; past `seconds`
    the whole group is killed and 124 returned, as timeout(1) does."""
    with open(log, "a") as out:
        print("$", " ".join(command), file=out, flush=True)
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            return process.wait(timeout=max(seconds, 0.1))
        except subprocess.TimeoutExpired:
            out.write(f"\ngpu_check: killed after {seconds:.0f} s (the stage's deadline)\n")
            return 124
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def build_native(log: Path, seconds: float) -> int:
    """CMake-build kernels/ for sm_90 with warnings as errors, in a fresh build directory
    (the device copy of the tree has no build outputs; a reused one would hide a broken build)."""
    began = time.monotonic()
    lib_dir = os.environ.get(LIB_DIR_ENV)
    with tempfile.TemporaryDirectory(prefix="ratio-fast-native-") as build:
        configure = ["cmake", "-S", str(ROOT), "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DRATIO_FAST_WERROR=ON",
                     "-DCMAKE_CUDA_ARCHITECTURES=90", *(["-G", "Ninja"] if shutil.which("ninja") else []),
                     *([f"-DRATIO_FAST_LIB_DIR={lib_dir}"] if lib_dir else [])]
        code = run_capped(configure, log, seconds)
        if code == 0:
            code = run_capped(["cmake", "--build", build, "--parallel", str(os.cpu_count() or 1)], log,
                              seconds - (time.monotonic() - began))
    return code


def run_stage(stage: Stage, out: Path, seconds: float, env: dict) -> int:
    log = out / f"{stage.name}.log"
    log.unlink(missing_ok=True)
    if not stage.pytest_args:
        return build_native(log, seconds)
    command = [sys.executable, "-m", "pytest", *stage.pytest_args, "-p", "gpu_check", "-p", "no:cacheprovider",
               "-v", "-rs", f"--junitxml={out / f'{stage.name}.xml'}"]
    if any(arg.startswith("bench/") for arg in stage.pytest_args):
        command.append("--benchmark-only")
    code = run_capped(command, log, seconds, env)
    return 0 if code == NO_TESTS_COLLECTED else code


def run(args) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    rows_path.unlink(missing_ok=True)  # this run's rows only
    env = {**os.environ, ROWS_ENV: str(rows_path), COMMIT_ENV: args.commit,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(BENCH), os.environ.get("PYTHONPATH")])),
           # tests/conftest.py would pick Triton's interpreter; on a GPU the compiled kernels are checked.
           "TRITON_INTERPRET": "0",
           "RATIO_FAST_CACHE_DIR": str(out / "cache")}  # the 'auto' choices are measured in this run
    date = datetime.datetime.now(datetime.timezone.utc).isoformat()
    chosen = [stage for stage in STAGES if not args.stages or stage.name in args.stages.split(",")]
    signal.signal(signal.SIGTERM, _on_sigterm)
    began, deadline, codes = time.monotonic(), 0.0, []
    try:
        for stage in chosen:
            deadline += stage.cap_s
            seconds = deadline - (time.monotonic() - began)
            if seconds < MIN_STAGE_S:
                print(f"gpu_check: no time left for {stage.name}", flush=True)
                codes.append(124)
                continue
            print(f"== {stage.name} (up to {seconds:.0f} s)", flush=True)
            stage_began, code = time.monotonic(), None
            try:
                code = run_stage(stage, out, seconds, env)
            finally:  # interrupted too (exit_code None): the row says how far the stage got
                row = {"case": f"stage:{stage.name}", "stage": stage.name, "exit_code": code, "cap_s": stage.cap_s,
                       "deadline_s": round(seconds, 1), "seconds": round(time.monotonic() - stage_began, 1),
                       "commit": args.commit, "date": date, **junit_counts(out / f"{stage.name}.xml")}
                append_rows(rows_path, [row])
            codes.append(code)
    except Interrupted:
        print("gpu_check: stopped by SIGTERM; writing what was measured", flush=True)
        codes.append(-int(signal.SIGTERM))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second of work left: finish it (timeout's -k still applies)
    rows = read_rows(rows_path)
    measured = next((row for row in rows if "stage" not in row), None)  # saves importing torch here
    provenance = {k: v for k, v in (measured or machine()).items() if k in PROVENANCE}
    for row in rows:
        if "stage" in row:
            row.update(provenance)
    print(f"\nrows: {write_rows(rows, out)}\n\n{table(rows)}", flush=True)
    return next((code for code in codes if code), 0)


def convert(args) -> int:
    rows = [row for name in args.benchmark_json for row in rows_from_file(Path(name), args.commit)]
    path = write_rows(rows, Path(args.out))
    print(f"rows: {path}")
    print(table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
