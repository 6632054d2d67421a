"""Benchmarks: `pytest bench/ --benchmark-only`. GPU cases skip without CUDA (../conftest.py)."""
import platform

import pytest
import torch


@pytest.fixture
def sync():
    """Call after GPU work inside a timed function so the benchmark measures the kernels, not launches."""
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Every result file says what it ran on: GPU (or CPU) name and the torch and triton versions."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        machine_info["gpu_arch"] = f"sm{major}{minor}"
    else:
        gpu = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    machine_info.update(gpu=gpu, torch=torch.__version__, triton=triton_version,
                        cuda=torch.version.cuda)
