"""Benchmarks: `pytest bench/ --benchmark-only`. GPU cases skip without CUDA (../conftest.py)."""
import pytest
import torch


@pytest.fixture
def sync():
    """Call after GPU work inside a timed function so the benchmark measures the kernels, not launches."""
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
