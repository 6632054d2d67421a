"""The projected L2 PGD step alone: fused Triton vs the eager plain-torch reference.

Bytes moved per step (the memory-bandwidth floor): read x, delta, grad, velocity and write
x_adv, delta, velocity, all fp32 -> 7 * 4 bytes per element. `extra_info['gb_per_s']` is
that traffic over the measured median.
"""
import pytest
import torch

from ratio_fast.ops import pgd_step

CPU_BATCHES = [32]
GPU_BATCHES = [128, 512, 2048]


def make_inputs(batch, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (batch, 3, 32, 32)
    x = torch.rand(shape, generator=g).to(device)
    delta = (torch.randn(shape, generator=g) * 0.01).to(device)
    grad = torch.randn(shape, generator=g).to(device)
    velocity = (torch.randn(shape, generator=g) * 1e-3).to(device)
    return x, delta, grad, velocity


def run_case(benchmark, sync, batch, device, backend):
    x, delta, grad, velocity = make_inputs(batch, device)

    def step():
        out = pgd_step(x, delta, grad, 0.5, 0.1, velocity, 0.9, backend=backend)
        sync()
        return out

    step()  # warm-up: compilation and caches
    benchmark.pedantic(step, rounds=50, iterations=5, warmup_rounds=2)
    seconds = benchmark.stats.stats.median  # per call: pytest-benchmark divides by iterations
    benchmark.extra_info.update(batch=batch, device=str(device), backend=backend,
                                gb_per_s=7 * 4 * x.numel() / seconds / 1e9)


@pytest.mark.parametrize("batch", CPU_BATCHES)
def test_pgd_step_cpu_reference(benchmark, sync, batch):
    run_case(benchmark, sync, batch, "cpu", "torch")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("batch", GPU_BATCHES)
def test_pgd_step_gpu(benchmark, sync, batch, backend):
    run_case(benchmark, sync, batch, "cuda", backend)
