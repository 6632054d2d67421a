"""The whole GPU check in one device call: GPU tests, then the benchmarks, then a table.

    python3 bench/gpu_check.py --out "$OUT" --commit <sha>        # on the GPU machine
    python3 bench/gpu_check.py convert benchmark-*.json --out bench/results --commit <sha>

`run` (the default) runs `pytest -m gpu tests/`, then `pytest bench/ --benchmark-only` in a few
processes (BENCH_RUNS), each under a share of a wall-clock budget so that a hang in one still
leaves the others' results, then writes under --out:
    gpu_tests.log, gpu_tests.xml        the test run (pytest output, JUnit XML)
    benchmark-<i>.json, benchmark-<i>.log   pytest-benchmark's results and output, per process
    <date>-<gpu>.jsonl                  one row per case, the format committed in bench/results/
and prints a short table. `convert` turns any pytest-benchmark JSON into those rows.

A row has case, gpu, torch, triton, date, commit, the times in seconds (median_s, mean_s,
min_s, max_s, stddev_s, rounds) and the case's extra_info (for the RATIO step:
speedup_vs_reference, mfu as a fraction, images_per_s). One extra row, case "gpu-tests",
records how many GPU tests passed, failed and were skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAT_FIELDS = ("median", "mean", "min", "max", "stddev")


def rows_from_benchmark_json(data: dict, commit: str | None = None) -> list[dict]:
    """One row per benchmark in a pytest-benchmark JSON document."""
    machine = data.get("machine_info", {})
    commit = commit or (data.get("commit_info") or {}).get("id") or "unknown"
    common = {"gpu": machine.get("gpu") or machine.get("cpu", {}).get("brand_raw") or "unknown",
              "torch": machine.get("torch"), "triton": machine.get("triton"),
              "date": data.get("datetime", ""), "commit": commit}
    rows = []
    for bench in data.get("benchmarks", []):
        stats = bench["stats"]
        row = dict(bench.get("extra_info", {}))  # first, so it cannot overwrite the fields below
        row.update(case=_case_name(bench), group=bench.get("group"), **common)
        row.update({f"{name}_s": stats[name] for name in STAT_FIELDS})
        row["rounds"] = stats["rounds"]
        rows.append(row)
    return rows


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


def results_file_name(rows: list[dict]) -> str:
    """<date>-<gpu>.jsonl, e.g. 2025-07-01-nvidia-h100-80gb-hbm3.jsonl."""
    first = rows[0] if rows else {}
    date = str(first.get("date", ""))[:10] or time.strftime("%Y-%m-%d")
    gpu = re.sub(r"[^a-z0-9]+", "-", str(first.get("gpu", "unknown")).lower()).strip("-")
    return f"{date}-{gpu}.jsonl"


def write_rows(rows: list[dict], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / results_file_name(rows)
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return path


def table(rows: list[dict]) -> str:
    """case | median | images/s | speedup vs reference | MFU, for the rows that have times."""
    lines = [f"{'case':58} {'median':>11} {'img/s':>9} {'speedup':>8} {'MFU':>6}"]
    for row in rows:
        if "median_s" not in row:
            continue
        median = row["median_s"]
        shown = f"{median * 1e3:.2f} ms" if median >= 1e-3 else f"{median * 1e6:.1f} us"
        imgs = f"{row['images_per_s']:.0f}" if row.get("images_per_s") else ""
        speedup = f"{row['speedup_vs_reference']:.2f}x" if row.get("speedup_vs_reference") else ""
        mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else ""
        lines.append(f"{row['case'][:58]:58} {shown:>11} {imgs:>9} {speedup:>8} {mfu:>6}")
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


def _pytest(args: list[str], log: Path, timeout: float) -> int:
    """Run pytest in a subprocess, output to `log` and echoed; returns its exit code (124: timed out)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TRITON_INTERPRET": "0"}  # tests/conftest.py would pick the interpreter; on a GPU we time compiled kernels
    command = [sys.executable, "-m", "pytest", *args]
    print("$", " ".join(command), flush=True)
    with open(log, "w") as out:
        try:
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            code = 124
            out.write(f"\ngpu_check: timed out after {timeout:.0f} s\n")
    tail = log.read_text().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return code


# The benchmarks as separate pytest processes, most important last-to-fail first: each writes its
# own JSON, so a case that runs over its time costs only the rows of its own process.
# (label, pytest arguments, -k expression or None, seconds at most)
BENCH_RUNS = [
    ("other benchmarks", ["bench/", "--ignore=bench/test_bench_ratio_step.py"], None, 100),
    ("ratio step: reference and fast engine", ["bench/test_bench_ratio_step.py"], "reference or fast", 220),
    ("ratio step: one switch at a time", ["bench/test_bench_ratio_step.py"], "not reference and not fast", None),
]
NO_TESTS_COLLECTED = 5  # pytest's exit code when -k/-m leave nothing to run


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    # A fresh schedule cache, so the 'auto' choice is measured in this run.
    os.environ.setdefault("RATIO_FAST_CACHE_DIR", str(out / "cache"))
    rows, codes = [], []
    if not args.skip_tests:
        code = _pytest(["-m", "gpu", "tests/", "-q", "-p", "no:cacheprovider", f"--junitxml={out / 'gpu_tests.xml'}"],
                       out / "gpu_tests.log", args.tests_budget)
        codes.append(code)
        rows.append({"case": "gpu-tests", "exit_code": code, **junit_counts(out / "gpu_tests.xml")})
    bench_rows = []
    for index, (label, paths, keyword, cap) in enumerate(BENCH_RUNS):
        remaining = args.budget - (time.monotonic() - began)
        if remaining < 10:
            print(f"gpu_check: no time left for {label}", flush=True)
            codes.append(124)
            continue
        json_path = out / f"benchmark-{index}.json"
        bench_args = [*paths, "--benchmark-only", f"--benchmark-json={json_path}", "-q", "-p", "no:cacheprovider"]
        if args.bench_marker:
            bench_args += ["-m", args.bench_marker]
        keywords = [f"({k})" for k in (keyword, args.bench_k) if k]
        if keywords:
            bench_args += ["-k", " and ".join(keywords)]
        print(f"\n== {label}", flush=True)
        code = _pytest(bench_args, out / f"benchmark-{index}.log", min(remaining, cap or remaining))
        codes.append(0 if code == NO_TESTS_COLLECTED else code)
        bench_rows += rows_from_file(json_path, args.commit)
    for row in rows:  # the test row gets the same provenance as the benchmark rows
        row.update({k: bench_rows[0][k] for k in ("gpu", "torch", "triton", "date", "commit")} if bench_rows else {})
    rows += bench_rows
    path = write_rows(rows, out)
    print(f"\nrows: {path}\n")
    print(table(rows))
    if rows and rows[0]["case"] == "gpu-tests":
        r = rows[0]
        print(f"\nGPU tests: {r['passed']} passed, {r['failed']} failed, {r['errors']} errors, {r['skipped']} skipped")
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
        p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for <date>-<gpu>.jsonl")
        p.add_argument("--commit", default=None, help="commit id for the rows (default: the JSON's commit_info)")
        return convert(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="gpu_check.py", description="GPU tests, then benchmarks, in one call")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="where results go (default $OUT)")
    p.add_argument("--commit", default=None, help="commit id for the rows (the device copy has no .git)")
    p.add_argument("--budget", type=float, default=560, help="seconds for the whole check")
    p.add_argument("--tests-budget", type=float, default=200, help="seconds for the GPU tests")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--bench-marker", default="gpu", help="pytest -m expression for bench/ ('' for every case)")
    p.add_argument("--bench-k", default=None, help="pytest -k expression to pick benchmark cases")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
