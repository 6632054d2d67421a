"""Shared by tests/ and bench/: GPU cases skip cleanly on machines without CUDA.

tests/conftest.py runs Triton in its interpreter unless TRITON_INTERPRET is set; the GPU cases
must exercise the compiled kernels, so with the interpreter on they skip and say how to run them.
"""
import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        reason = "needs a CUDA device"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        reason = "GPU cases test compiled Triton kernels: run them with TRITON_INTERPRET=0 (bench/gpu_check.py does)"
    else:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: a param id "gpu" matches that
            item.add_marker(skip)
