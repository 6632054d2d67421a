"""bench/gpu_check.py's rows from real benchmark runs on the CPU.

The GPU check loads gpu_check as a pytest plugin, which writes each case's row the moment it is
measured; here the CPU cases of the RATIO-step benchmark stand in for the GPU ones, so the rows,
their agreement with pytest-benchmark's own JSON, the file name and the table are checked on
real output. A process killed mid-run keeps the rows of the cases it finished.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"case", "gpu", "torch", "triton", "date", "commit", "median_s", "mean_s", "min_s", "rounds"}


def pytest_with_rows(gpu_check, args, rows_path, **env):
    """pytest in a subprocess with the gpu_check plugin writing rows to `rows_path`."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, gpu_check.ROWS_ENV: str(rows_path), gpu_check.COMMIT_ENV: "abc123", **env}
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "gpu_check", "-p", "no:cacheprovider", "-q"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, bench_module):
    """The reference and the default engine on CPU (quick size): streamed rows and pytest-benchmark's JSON."""
    out = tmp_path_factory.mktemp("rows")
    gpu_check = bench_module("gpu_check")
    done = pytest_with_rows(gpu_check, ["bench/test_bench_ratio_step.py", "--benchmark-only", f"--benchmark-json={out / 'b.json'}",
                             "-k", "test_ratio_step_cpu_reference or test_ratio_step_cpu and fast"],
                            out / "rows.jsonl", RATIO_FAST_BENCH_QUICK="1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return gpu_check, out


def test_each_measured_case_has_a_row(cpu_run):
    gpu_check, out = cpu_run
    rows = gpu_check.read_rows(out / "rows.jsonl")
    by_case = {row["case"]: row for row in rows}
    assert set(by_case) == {"test_bench_ratio_step::test_ratio_step_cpu_reference",
                            "test_bench_ratio_step::test_ratio_step_cpu[fast]"}
    for row in rows:
        assert REQUIRED <= set(row), REQUIRED - set(row)
        assert row["commit"] == "abc123" and row["torch"] == torch.__version__ and row["gpu"].startswith("cpu")
        assert 0 < row["min_s"] <= row["median_s"] and row["rounds"] >= 1
    engine = by_case["test_bench_ratio_step::test_ratio_step_cpu[fast]"]
    reference = by_case["test_bench_ratio_step::test_ratio_step_cpu_reference"]
    # The speedup is the two medians of this one run, whatever their values.
    assert engine["speedup_vs_reference"] == pytest.approx(reference["median_s"] / engine["median_s"])
    assert engine["images_per_s"] == pytest.approx(2 * 16 / engine["median_s"]) and engine["batch"] == "16+16"
    assert (reference["conv_precision"], engine["conv_precision"]) == ("fp32 (ieee)", "fp32 (ieee)")
    assert "mfu" not in engine  # no GPU, no peak to compare with


def test_streamed_rows_equal_the_converted_json(cpu_run, tmp_path, capsys):
    gpu_check, out = cpu_run
    assert gpu_check.main(["convert", str(out / "b.json"), "--out", str(tmp_path), "--commit", "abc123"]) == 0
    (converted,) = tmp_path.glob("*-cpu-*.jsonl")
    streamed = gpu_check.read_rows(out / "rows.jsonl")
    without_date = [{k: v for k, v in row.items() if k != "date"} for row in streamed]
    assert without_date == [{k: v for k, v in row.items() if k != "date"} for row in gpu_check.read_rows(converted)]
    shown = capsys.readouterr().out
    assert "ratio_step::ratio_step_cpu[fast]" in shown and "x " in shown  # the speedup column


def test_a_killed_process_keeps_the_rows_it_measured(tmp_path, bench_module):
    (tmp_path / "test_two.py").write_text(textwrap.dedent("""
        import os, signal

        def test_measured(benchmark):
            benchmark.pedantic(sum, args=([1, 2],), rounds=3)
            benchmark.extra_info["note"] = "kept"

        def test_killed(benchmark):
            os.kill(os.getpid(), signal.SIGKILL)  # what a stage's deadline does to its process
    """))
    gpu_check = bench_module("gpu_check")
    done = pytest_with_rows(gpu_check, [str(tmp_path / "test_two.py")], tmp_path / "rows.jsonl")
    assert done.returncode == -9
    (row,) = gpu_check.read_rows(tmp_path / "rows.jsonl")
    assert row["case"] == "test_two::test_measured" and row["note"] == "kept" and row["rounds"] == 3


def test_rows_from_a_document_without_extras(bench_module):
    gpu_check = bench_module("gpu_check")
    document = {"datetime": "2030-01-02T03:04:05", "commit_info": {"id": "feed"},
                "machine_info": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0"},
                "benchmarks": [{"name": "test_x[1]", "fullname": "bench/test_bench_x.py::test_x[1]", "group": None,
                                "stats": {"median": 2e-6, "mean": 3e-6, "min": 1e-6, "max": 9e-6,
                                          "stddev": 1e-6, "rounds": 5}, "extra_info": {"hbm_fraction": 0.5}}]}
    (row,) = gpu_check.rows_from_benchmark_json(document)
    assert row["case"] == "test_bench_x::test_x[1]" and row["commit"] == "feed" and row["hbm_fraction"] == 0.5
    assert gpu_check.results_file_name([row]) == "2030-01-02-nvidia-h100-80gb-hbm3.jsonl"
    assert "2.0 us" in gpu_check.table([row]) and "50% HBM" in gpu_check.table([row])
    assert gpu_check.junit_counts(Path("missing.xml")) == {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    assert json.loads(json.dumps(row)) == row


def test_peaks_come_from_the_gpu_name(bench_module):
    peaks = bench_module("gpu_peaks")
    assert peaks.peak_for("NVIDIA H200").hbm_bytes_per_s == 4.8e12
    assert peaks.peak_for("NVIDIA H100 80GB HBM3").hbm_bytes_per_s == 3.35e12
    assert peaks.peak_for("NVIDIA H100 PCIe") is None and peaks.peak_for("cpu (x86_64, 2 threads)") is None
