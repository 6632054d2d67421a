"""Fused ops of the attacks, each with its plain-torch reference (`*_ref`), in either norm of
`_common.NORMS` ('l2', 'linf').

`backend`: 'auto' runs Triton on CUDA tensors and the reference elsewhere; 'triton', 'native'
(the C++/OpenMP or CUDA kernels of kernels/, see `native.py`) or 'torch' forces one (Triton runs
on CPU tensors only under TRITON_INTERPRET=1).
"""
from .pgd_step import pgd_step, pgd_step_ref
from .random_start import random_start, random_start_ref, sample_ball

__all__ = ["pgd_step", "pgd_step_ref", "random_start", "random_start_ref", "sample_ball"]
