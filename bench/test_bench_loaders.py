"""Images per second of each loader kind, next to the rate one RATIO step consumes.

A loader keeps up when its rate is well above ``extra_info['ratio_step_images_per_s']``: the
in-distribution images one RATIO step trains on per second (the out-distribution stream
needs the same rate again). On CPU that rate is measured here on the tiny model; on the GPU
the field ``ratio_step_images_per_s_gpu`` is left ``None`` for the GPU script, which measures
the WRN-34-10 step, to fill in.

Measured on the 2-core AMD EPYC dev machine (torch 2.13.0+cpu, DALI 2.4.0 CPU pipeline,
synthetic 10240 x 32x32x3 uint8, global batch 128, augment on), 59 batches in order after one
warm-up batch, machine otherwise idle:
    gpu (resident, one gather)      ~70k img/s
    torch, 2 DataLoader workers     ~28k img/s   (0 workers: ~56k, 1: ~21k)
    dali, 2 Python workers          ~46k img/s   (0 workers: ~57k, 1: ~44k)
    RATIO step, tiny model          ~400 img/s   (README: 356 to 431 img/s)
Every loader kind is 50x or more above what the step consumes. This file, run while other
jobs loaded the 2 cores (load average 6), gave torch ~25k img/s, gpu and dali ~3k img/s:
compare kinds within one quiet run only. The ``auto`` rule in ratio_fast/data/loaders.py
follows the quiet numbers: resident when the set fits, else DALI. H100: not measured yet (no
GPU lent to this work; the GPU machine also lacks DALI, see ../shared/GPU.md).
"""
import time

import pytest
import torch

from ratio_fast.data import make_loader, make_synthetic

CPU_IMAGES, GPU_IMAGES = 10240, 50000
BATCH = 128
BATCHES_TIMED = 20
STREAMING_WORKERS = 2
KINDS = ["gpu", "torch", "dali"]
# Not the bare word "gpu" as a test id: the root conftest skips items whose keywords hold it.
KIND_IDS = ["resident-loader", "torch-loader", "dali-loader"]


@pytest.fixture(scope="module")
def ratio_step_images_per_s():
    """In-distribution images per second of a RATIO step (tiny model, 10/20 attack steps) on CPU."""
    from ratio_fast.config import TrainConfig
    from ratio_fast.models import create_model
    from ratio_fast.train import RatioTrainer

    x, y = make_synthetic(BATCH)
    batch = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)
    labels = torch.from_numpy(y)
    trainer = RatioTrainer(create_model("tiny"), TrainConfig(arch="tiny", dataset="synthetic"), 10, "cpu")
    trainer.step(batch, labels, batch.flip(0))  # warm-up
    began = time.perf_counter()
    steps = 2
    for _ in range(steps):
        trainer.step(batch, labels, batch.flip(0))
    return steps * BATCH / (time.perf_counter() - began)


def run_case(benchmark, sync, kind, device, num_images, extra):
    x, y = make_synthetic(num_images)
    workers = None if kind == "gpu" else STREAMING_WORKERS
    loader = make_loader(kind, x, y, BATCH, device, seed=0, workers=workers)
    position = iter(range(10**9))
    loader.batch(0, 0)  # warm-up: workers and pipeline started, first batches prefetched

    def take_batches():
        for _ in range(BATCHES_TIMED):
            epoch, index = divmod(1 + next(position), len(loader))
            xb, _ = loader.batch(epoch, index)  # in order: the stream keeps running
        sync()
        return xb

    benchmark.pedantic(take_batches, rounds=5, iterations=1, warmup_rounds=1)
    seconds_per_batch = benchmark.stats.stats.median / BATCHES_TIMED
    benchmark.extra_info.update(kind=kind, device=str(device), batch=BATCH, images=num_images,
                                workers=workers, images_per_s=round(BATCH / seconds_per_batch), **extra)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_loader_cpu(benchmark, sync, kind, ratio_step_images_per_s):
    run_case(benchmark, sync, kind, "cpu", CPU_IMAGES,
             {"ratio_step_images_per_s": round(ratio_step_images_per_s), "ratio_step_model": "tiny (CPU)"})


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_loader_cuda(benchmark, sync, kind):
    if kind == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed on this GPU machine")
    run_case(benchmark, sync, kind, "cuda", GPU_IMAGES,
             {"gpu": torch.cuda.get_device_name(), "ratio_step_images_per_s_gpu": None})
