"""Benchmarks: `pytest bench/ --benchmark-only`. GPU cases skip without CUDA (../conftest.py)."""
import pytest
import torch

from gpu_check import machine


@pytest.fixture
def sync():
    """Call after GPU work inside a timed function so the benchmark measures the kernels, not launches."""
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Every result file says what it ran on: GPU (or CPU) name and the torch and triton versions."""
    machine_info.update(machine())
