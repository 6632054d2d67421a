"""One BatchNorm layer's train-mode forward and backward: torch's BatchNorm2d against
GroupedBatchNorm2d (--bn-groups 2, ratio_fast/models/grouped_batchnorm.py), in NCHW and
channels_last. The grouped layer is torch's BatchNorm on a copy of the batch with the groups side
by side as channels, plus the copy back: this measures what the two copies cost each way.

CPU: fp32, a 64-channel 16x16 activation of 128 images. GPU: bf16 under autocast (the default
fast path) at WRN-34-10's widest BatchNorm input for the joint batch of 256 (160 channels, 32x32)
and its narrowest (640 channels, 8x8). extra_info: `implementation` (batchnorm or grouped),
`memory_format`, `shape`, `dtype`, `us_per_step`.
"""
import copy

import pytest
import torch
from torch import nn

from ratio_fast.models.grouped_batchnorm import group_batchnorm

CPU_SHAPES = [(128, 64, 16, 16)]
GPU_SHAPES = [(256, 160, 32, 32), (256, 640, 8, 8)]
IMPLEMENTATIONS = ["batchnorm", "grouped"]
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def run_case(benchmark, sync, device, shape, implementation, memory_format, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device, dtype).contiguous(memory_format=FORMATS[memory_format])
    x.requires_grad_(True)
    upstream = torch.randn(shape, generator=g).to(device, dtype).contiguous(memory_format=FORMATS[memory_format])
    layer = nn.BatchNorm2d(shape[1]).to(device)
    if implementation == "grouped":
        layer = group_batchnorm(nn.Sequential(copy.deepcopy(layer)), 2)[0]

    def step():
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            out = layer(x)
        out.backward(upstream)
        sync()

    step()  # warm-up: cuDNN plans, allocator
    benchmark.pedantic(step, rounds=20, iterations=3, warmup_rounds=2)
    benchmark.extra_info.update(implementation=implementation, memory_format=memory_format, shape=list(shape),
                                dtype=str(dtype).removeprefix("torch."), device=device,
                                us_per_step=benchmark.stats.stats.median * 1e6)


@pytest.mark.benchmark(group="bn-groups-cpu")
@pytest.mark.parametrize("memory_format", list(FORMATS))
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bn_groups_cpu(benchmark, sync, shape, implementation, memory_format):
    run_case(benchmark, sync, "cpu", shape, implementation, memory_format, torch.float32)


@pytest.mark.gpu
@pytest.mark.benchmark(group="bn-groups-gpu")
@pytest.mark.parametrize("memory_format", list(FORMATS))
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bn_groups_gpu(benchmark, sync, shape, implementation, memory_format):
    run_case(benchmark, sync, "cuda", shape, implementation, memory_format, torch.bfloat16)
