"""Fused ops of the attacks, each with its plain-torch reference (`*_ref`), in either norm of
`NORMS` ('l2', 'linf'; choices.NORMS).

`backend` (choices.BACKENDS): 'auto' runs Triton on CUDA tensors and the reference elsewhere;
'triton', 'native' (the C++/OpenMP or CUDA kernels of kernels/, see `native.py`) or 'torch'
forces one (Triton runs on CPU tensors only under TRITON_INTERPRET=1). The helpers the attacks
share with the ops (per-sample parameters, memory layout, accumulation type) are exported here.
"""
from ._common import BACKENDS, NORMS, check_norm, compute_dtype, per_sample, require_backend, sample_layout
from .pgd_step import pgd_step, pgd_step_ref
from .random_start import random_start, random_start_ref, sample_ball

__all__ = ["BACKENDS", "NORMS", "check_norm", "compute_dtype", "per_sample", "pgd_step", "pgd_step_ref", "random_start",
           "random_start_ref", "require_backend", "sample_ball", "sample_layout"]
