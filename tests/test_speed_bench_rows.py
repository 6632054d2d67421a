"""bench/gpu_check.py end to end on the CPU: a real (small) benchmark run becomes result rows.

The GPU machine runs the same script with the GPU cases; here the CPU cases of the RATIO-step
benchmark stand in, so the run, the JSON conversion, the file name and the table are checked
on real pytest-benchmark output.
"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"case", "gpu", "torch", "triton", "date", "commit", "median_s", "mean_s", "min_s", "rounds"}


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("ratio_bench_gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """gpu_check's run mode on two CPU cases: the reference and the default engine (at a quick size)."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("RATIO_FAST_BENCH_QUICK", "1")
    gpu_check = load_gpu_check()
    out = tmp_path_factory.mktemp("gpu_check")
    code = gpu_check.main(["--out", str(out), "--commit", "abc123", "--skip-tests", "--bench-marker", "not gpu",
                           "--bench-k", "test_ratio_step_cpu_reference or test_ratio_step_cpu and fast"])
    monkeypatch.undo()
    return gpu_check, out, code


def test_run_writes_rows_for_each_case(cpu_run):
    gpu_check, out, code = cpu_run
    assert code == 0, (out / "benchmark.log").read_text()[-3000:]
    files = list(out.glob("*.jsonl"))
    assert len(files) == 1 and files[0].name.endswith("-cpu-" + files[0].name.split("-cpu-")[-1])
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
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
    assert "mfu" not in engine  # a CPU has no 790 TFLOP/s to compare with


def test_convert_gives_the_same_rows_and_a_table(cpu_run, tmp_path, capsys):
    gpu_check, out, _ = cpu_run
    documents = sorted(str(p) for p in out.glob("benchmark-*.json"))
    assert gpu_check.main(["convert", *documents, "--out", str(tmp_path), "--commit", "abc123"]) == 0
    (converted,) = tmp_path.glob("*.jsonl")
    assert converted.read_text() == next(out.glob("*.jsonl")).read_text()
    shown = capsys.readouterr().out
    assert "test_ratio_step_cpu[fast]" in shown and "x " in shown  # the speedup column


def test_rows_from_a_document_without_extras():
    gpu_check = load_gpu_check()
    document = {"datetime": "2030-01-02T03:04:05", "commit_info": {"id": "feed"},
                "machine_info": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0"},
                "benchmarks": [{"name": "test_x[1]", "fullname": "bench/test_bench_x.py::test_x[1]", "group": None,
                                "stats": {"median": 2e-6, "mean": 3e-6, "min": 1e-6, "max": 9e-6,
                                          "stddev": 1e-6, "rounds": 5}, "extra_info": {"gb_per_s": 10.0}}]}
    (row,) = gpu_check.rows_from_benchmark_json(document)
    assert row["case"] == "test_bench_x::test_x[1]" and row["commit"] == "feed" and row["gb_per_s"] == 10.0
    assert gpu_check.results_file_name([row]) == "2030-01-02-nvidia-h100-80gb-hbm3.jsonl"
    assert "2.0 us" in gpu_check.table([row])
    assert gpu_check.junit_counts(Path("missing.xml")) == {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
