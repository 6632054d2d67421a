"""The projected PGD step alone, in L2 and in L-infinity, every backend against the memory-bandwidth
floor.

Both norms run the authors' ArgminPGD step (momentum 0.9, so with a velocity buffer) on CIFAR-sized
samples. Bytes moved per step, either norm: read x, delta, grad, velocity and write x_adv, delta,
velocity, all fp32 -> 7 * 4 bytes per element (the L2 step reads them once too: its extra
reductions stay in registers). extra_info records `gb_per_s` (that traffic over the median time of
one step), `copy_gb_per_s` and `floor_fraction` (gb_per_s over copy_gb_per_s: the bandwidth of a
plain copy, the floor of a memory-bound step) and, on GPU, `hbm_fraction` (against the HBM peak
of this GPU in gpu_peaks.py; absent for a GPU not listed there), with the device name. The copy:
on GPU a 1 GiB device-to-device copy; on CPU a copy of as many bytes as one step moves, since a
CPU step's 3 to 11 MB stay in caches that a large copy would not (same process, same threads).

CPU: the native C++/OpenMP kernel, the eager torch reference and torch.compile of the reference.
GPU: Triton, native CUDA, eager torch and torch.compile at batch 128/512/2048. Every case runs in
both norms (`norm` in extra_info; the GPU check's pgd-step stage selects `test_pgd_step_gpu`, so
it runs the L-infinity cases too). GPU rounds launch
`GPU_STEPS_PER_ROUND` steps and synchronize once, so launch latency overlaps the kernels as in an
attack loop.
"""
import functools
import time

import pytest
import torch

from gpu_peaks import peak_for
from ratio_fast.ops import native, pgd_step, pgd_step_ref
from ratio_fast.ops import NORMS

CPU_BATCHES = [32, 128]
GPU_BATCHES = [128, 512, 2048]
GPU_STEPS_PER_ROUND = 20
BYTES_PER_ELEMENT = 7 * 4


def make_inputs(batch, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (batch, 3, 32, 32)
    x = torch.rand(shape, generator=g).to(device)
    delta = (torch.randn(shape, generator=g) * 0.01).to(device)
    grad = torch.randn(shape, generator=g).to(device)
    velocity = (torch.randn(shape, generator=g) * 1e-3).to(device)
    return x, delta, grad, velocity


# The authors' radii and steps on CIFAR-10: L2 eps 0.5, step 0.1; L-infinity eps 8/255, step 2/255.
STEP_SETTINGS = {"l2": {"eps": 0.5, "step_size": 0.1}, "linf": {"eps": 8 / 255, "step_size": 2 / 255}}


def step_function(backend, device, norm):
    """(x, delta, grad, velocity) -> one step; 'compiled' is torch.compile of the reference."""
    settings = dict(STEP_SETTINGS[norm], momentum=0.9, norm=norm)
    if backend == "compiled":
        return torch.compile(functools.partial(pgd_step_ref, **settings), dynamic=False)
    if backend == "native" and not native.library_path(device).exists():
        pytest.skip("the native library is not built (pip install -e .)")
    return functools.partial(pgd_step, **settings, backend=backend)


def run_case(benchmark, sync, batch, device, backend, norm, steps_per_round=1):
    x, delta, grad, velocity = make_inputs(batch, device)
    step = step_function(backend, device, norm)

    def steps():
        for _ in range(steps_per_round):
            out = step(x, delta, grad, velocity=velocity)
        sync()
        return out

    steps()  # warm-up: compilation, caches, the library load
    benchmark.pedantic(steps, rounds=30, iterations=3, warmup_rounds=2)
    seconds = benchmark.stats.stats.median / steps_per_round  # pytest-benchmark divides by iterations
    gb_per_s = BYTES_PER_ELEMENT * x.numel() / seconds / 1e9
    benchmark.extra_info.update(batch=batch, device=str(device), backend=backend, norm=norm,
                                us_per_step=seconds * 1e6, gb_per_s=gb_per_s)
    return gb_per_s


@functools.cache
def cpu_copy_gb_per_s(batch: int) -> float:
    """Copy bandwidth (read + write) on the CPU for the bytes one step of `batch` moves, median of 50
    copies (after 2 that fault the pages in)."""
    src = torch.ones(batch * 3 * 32 * 32 * BYTES_PER_ELEMENT // 8)  # fp32: half the bytes each way
    dst = torch.empty_like(src)
    times = []
    for _ in range(52):
        began = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - began)
    seconds = sorted(times[2:])[len(times[2:]) // 2]
    return 2 * src.numel() * 4 / seconds / 1e9


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", ["native", "torch", "compiled"])
@pytest.mark.parametrize("batch", CPU_BATCHES)
def test_pgd_step_cpu(benchmark, sync, batch, backend, norm):
    gb_per_s = run_case(benchmark, sync, batch, "cpu", backend, norm)
    copy = cpu_copy_gb_per_s(batch)
    benchmark.extra_info.update(threads=torch.get_num_threads(), copy_gb_per_s=copy, floor_fraction=gb_per_s / copy)


@pytest.fixture(scope="session")
def copy_gb_per_s():
    """Device-to-device copy bandwidth (read + write) of a 1 GiB buffer, median of 10 copies."""
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    seconds = sorted(times[2:])[len(times[2:]) // 2]
    return 2 * src.numel() * 4 / seconds / 1e9


# The backend is the outer loop (the parametrize nearest the function), so the compiled cases,
# whose first call compiles, come last: a GPU check at its deadline loses only those.
@pytest.mark.gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", ["triton", "native", "torch", "compiled"])
def test_pgd_step_gpu(benchmark, sync, copy_gb_per_s, batch, backend, norm):
    gb_per_s = run_case(benchmark, sync, batch, "cuda", backend, norm, steps_per_round=GPU_STEPS_PER_ROUND)
    gpu = torch.cuda.get_device_name()
    benchmark.extra_info.update(gpu=gpu, copy_gb_per_s=copy_gb_per_s, floor_fraction=gb_per_s / copy_gb_per_s)
    peak = peak_for(gpu)
    if peak is not None:
        benchmark.extra_info["hbm_fraction"] = gb_per_s * 1e9 / peak.hbm_bytes_per_s
