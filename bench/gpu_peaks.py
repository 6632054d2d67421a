"""Peak figures of the GPUs this project measures on, keyed by the name CUDA reports.

The benchmarks divide by these: a RATIO step's MFU is useful FLOPs / time / `bf16_flops`, the
PGD step's HBM fraction is bytes moved / time / `hbm_bytes_per_s`. Each figure says where it
comes from; a GPU missing here gets no MFU or HBM fraction rather than another GPU's peak.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeak:
    hbm_bytes_per_s: float
    bf16_flops: float  # dense (no 2:4 sparsity), tensor cores
    source: str


# (text in torch.cuda.get_device_name(), peaks), first match wins.
PEAKS: tuple[tuple[str, GpuPeak], ...] = (
    ("H200", GpuPeak(4.8e12, 790e12,
                     "HBM3e 4.8 TB/s: NVIDIA H200 datasheet; bf16 790 TFLOP/s: dense bf16 measured on the "
                     "project's H200 (shared/GPU.md; the datasheet's dense figure is 989)")),
    ("H100 80GB HBM3", GpuPeak(3.35e12, 989e12,
                               "H100 SXM5 datasheet: HBM3 3.35 TB/s, 989 TFLOP/s dense bf16 (1979 with sparsity)")),
)


def peak_for(gpu_name: str) -> GpuPeak | None:
    """The peaks of the GPU called `gpu_name` (e.g. 'NVIDIA H200'), None for one not in PEAKS."""
    return next((peak for key, peak in PEAKS if key in gpu_name), None)
