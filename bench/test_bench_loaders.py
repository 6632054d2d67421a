"""Images per second of each loader kind and augmentation, next to the rate one RATIO step consumes.

A loader keeps up when its rate is well above ``extra_info['ratio_step_images_per_s']``: the
in-distribution images one RATIO step trains on per second (the out-distribution stream needs
the same rate again). On CPU that rate is measured here on the tiny model; on the GPU the field
``ratio_step_images_per_s_gpu`` is left ``None`` for the GPU script, which measures the
WRN-34-10 step, to fill in. ``--augment autoaugment_cutout`` (the default) adds AutoAugment and
Cutout to ``crop_flip``; ``test_autoaugment_cpu`` times the AutoAugment part alone.

Numbers: README "Benchmarks" and bench/results/, each with the machine it ran on. This machine
is shared: compare kinds within one quiet run only.
"""
import time

import numpy as np
import pytest
import torch

from ratio_fast.data import BatchSpec, make_loader, make_synthetic
from ratio_fast.data.augment import fill_colour
from ratio_fast.data.autoaugment import AutoAugment
from ratio_fast.data.plan import plan_epoch
from ratio_fast.datasets import CIFAR10

CPU_IMAGES, GPU_IMAGES = 10240, 50000
BATCH = 128
BATCHES_TIMED = 20
STREAMING_WORKERS = 2
KINDS = ["gpu", "torch", "dali"]
# Not the bare word "gpu" as a test id: the root conftest skips items whose keywords hold it.
KIND_IDS = ["resident-loader", "torch-loader", "dali-loader"]
AUGMENTS = ["crop_flip", "autoaugment_cutout"]


@pytest.fixture(scope="module")
def ratio_step_images_per_s():
    """In-distribution images per second of a RATIO step (tiny model, 10/20 attack steps) on CPU."""
    from ratio_fast.config import TrainConfig
    from ratio_fast.models import create_model
    from ratio_fast.training.trainer import RatioTrainer

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


def run_case(benchmark, sync, kind, augment, device, num_images, extra):
    x, y = make_synthetic(num_images)
    workers = None if kind == "gpu" else STREAMING_WORKERS
    loader = make_loader(kind, x, y, BatchSpec(BATCH, augment=augment), device, workers=workers)
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
    benchmark.extra_info.update(kind=kind, augment=augment, device=str(device), batch=BATCH, images=num_images,
                                workers=workers, images_per_s=round(BATCH / seconds_per_batch), **extra)
    if hasattr(loader, "close"):
        loader.close()


@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_loader_cpu(benchmark, sync, kind, augment, ratio_step_images_per_s):
    run_case(benchmark, sync, kind, augment, "cpu", CPU_IMAGES,
             {"ratio_step_images_per_s": round(ratio_step_images_per_s), "ratio_step_model": "tiny (CPU)",
              "threads": torch.get_num_threads()})


def test_autoaugment_cpu(benchmark):
    """The policy alone on a batch of 128 (the draws of one training batch), in the calling thread."""
    x, _ = make_synthetic(BATCH)
    images = torch.from_numpy(x)
    codes = torch.from_numpy(plan_epoch(0, 0, BATCH, shuffle=True, draws=BatchSpec(BATCH).draws).autoaugment)
    autoaugment = AutoAugment((32, 32), fill_colour(CIFAR10.mean), "cpu")
    benchmark.pedantic(autoaugment, args=(images, codes), rounds=10, iterations=3, warmup_rounds=1)
    benchmark.extra_info.update(batch=BATCH, images_per_s=round(BATCH / benchmark.stats.stats.median),
                                fired=int(np.count_nonzero(codes.numpy())), threads=torch.get_num_threads())


@pytest.mark.gpu
@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_loader_cuda(benchmark, sync, kind, augment):
    if kind == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed on this GPU machine")
    run_case(benchmark, sync, kind, augment, "cuda", GPU_IMAGES,
             {"gpu": torch.cuda.get_device_name(), "ratio_step_images_per_s_gpu": None})
