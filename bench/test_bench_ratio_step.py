"""One RATIO training step: the engine against the plain reference (bench/reference.py), and
the engine with each speed switch flipped, timed in the same process.

GPU: WRN-34-10, batch 128 in + 128 out, 10 / 20 attack steps (the paper's setting). CPU: the
tiny model at batch 64 + 64, so the whole suite runs on a laptop in a few minutes. The type-<mode>
cases run each other training type (choices.MODES) against the reference of that type.

Every engine row carries `speedup_vs_reference` (reference median / engine median, both
measured in this process), `images_per_s` (in- plus out-distribution images per second),
`conv_precision` (what the convolutions ran in: the reference keeps torch's default, TF32 for
fp32 convolutions on a GPU, as the authors' code runs today) and, on a GPU in gpu_peaks.py,
`mfu`: useful FLOPs per step (work_model.FLOP_PER_PAIR per in/out pair, counted in
work_model.py) / median time / the GPU's dense bf16 peak.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from cold_start import count_compiles
from gpu_peaks import peak_for
from ratio_fast import RatioTrainer, TrainConfig, create_model
from ratio_fast.choices import MODES
from ratio_fast.models.precision import fp32_conv_math
from reference import ReferenceRatio
from work_model import FLOP_PER_PAIR

SIZES = {
    "cuda": dict(arch="wrn34", batch_size=128, steps_in=10, steps_out=20),
    "cpu": dict(arch="tiny", batch_size=64, steps_in=10, steps_out=20),
}
TIMING = {  # untimed warm-up steps (compile, graph capture, the 'auto' measurement), timed rounds
    "cuda": dict(warmup=2, rounds=5),
    "cpu": dict(warmup=1, rounds=4),
}
if os.environ.get("RATIO_FAST_BENCH_QUICK") == "1":  # seconds, not minutes: for testing the tooling itself
    SIZES["cpu"] = dict(arch="tiny", batch_size=16, steps_in=2, steps_out=3)
    TIMING["cpu"] = dict(warmup=1, rounds=2)

# case -> TrainConfig overrides of the defaults (the fast choice for the device): each flips one switch.
# Cases other than the schedules keep attack_schedule 'auto': measured once per setting in this
# process (the cache is shared by the process's cases), so each gets its best schedule.
GPU_CASES = {  # most telling first: a run that runs out of time loses the last ones
    "fast": {},
    "no-compile": {"compile": False},
    "linf": {"norm": "linf"},  # the threat model, not a speed switch: its step against the L-infinity reference
    "fp32": {"amp": False},
    "no-cuda-graphs": {"cuda_graphs": False},
    "concat": {"attack_schedule": "concat"},
    "streams": {"attack_schedule": "streams"},
    "sequential": {"attack_schedule": "sequential"},
    "no-channels-last": {"channels_last": False},
    "weight-grads": {"input_grad_only": False},
    "no-fused-optimizer": {"fused_optimizer": False},
    "no-fp32-first-conv": {"fp32_first_conv": False},
    "bn-groups-2": {"bn_groups": 2},  # not a speed switch: the authors' BatchNorm, and what it costs
}
# One case per other training type (--mode), each against the reference of its own type: what
# each baseline costs at the engine's speed. On a GPU without torch.compile (each type's batch
# would compile its own graphs; the no-compile case shows what compiling adds for RATIO).
TYPE_CASES = {f"type-{mode}": {"mode": mode} for mode in MODES if mode != TrainConfig().mode}
GPU_CASES.update({case: {**overrides, "compile": False} for case, overrides in TYPE_CASES.items()})
# case -> the case whose measured attack schedule it takes instead of measuring its own. 'auto'
# runs both candidates on the first batch, and under torch.compile that compiles the attack graphs
# for 128 and for 256 (bench/cold_start.py counts them); the no-compile case, run just before in
# the ratio-step stage, measures the same choice without compiling.
SCHEDULE_FROM = {"fast": "no-compile"}
CPU_CASES = {
    "fast": {},  # on a CPU: fp32, NCHW, sequential, eager
    "concat": {"attack_schedule": "concat"},
    "linf": {"norm": "linf"},
    "bf16": {"amp": True},
    "channels-last": {"channels_last": True},
    "no-fused-optimizer": {"fused_optimizer": False},
    "weight-grads": {"input_grad_only": False},
    "bn-groups-2": {"bn_groups": 2},
    **TYPE_CASES,
}


def make_batch(device: str, batch: int):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    z = torch.rand(batch, 3, 32, 32, generator=g)
    return x.to(device), y.to(device), z.to(device)


def config_for(device: str, **overrides) -> TrainConfig:
    size = SIZES[device]
    return TrainConfig(arch=size["arch"], batch_size=size["batch_size"], steps_in=size["steps_in"],
                       steps_out=size["steps_out"], **overrides).validate()


def timed_step(step, device: str):
    def run():
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    return run


def median_seconds(run, warmup: int, rounds: int) -> float:
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(rounds):
        began = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def reference_step(device: str, mode: str = TrainConfig().mode, norm: str = TrainConfig().norm):
    cfg = config_for(device, mode=mode, norm=norm)
    torch.manual_seed(0)
    reference = ReferenceRatio(create_model(cfg.arch), cfg, total_steps=1000, device=device)
    x, y, z = make_batch(device, cfg.batch_size)
    return timed_step(lambda: reference.step(x, y, z), device)


@pytest.fixture(scope="session")
def schedule_cache(tmp_path_factory):
    """One 'auto' schedule cache per process: measured afresh, shared by the cases with the same key."""
    return tmp_path_factory.mktemp("schedule") / "attack_schedule.json"


@pytest.fixture(scope="session")
def measured_schedules():
    """case -> the schedule its 'auto' chose in this process (for SCHEDULE_FROM)."""
    return {}


@pytest.fixture(scope="module")
def reference_medians():
    """(device, mode, norm) -> median seconds of the reference step, filled by the reference case
    (RATIO in L2) or measured on demand."""
    return {}


def reference_seconds(reference_medians, device: str, mode: str, norm: str) -> float:
    if (device, mode, norm) not in reference_medians:
        reference_medians[device, mode, norm] = median_seconds(reference_step(device, mode, norm), **TIMING[device])
    return reference_medians[device, mode, norm]


def describe(benchmark, device: str, seconds: float, reference: float | None = None, **info):
    batch = SIZES[device]["batch_size"]
    mode = info.setdefault("mode", TrainConfig().mode)
    images = 2 * batch if MODES[mode].uses_out_data else batch
    info.update(device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu", model=SIZES[device]["arch"],
                batch=f"{batch}+{batch}" if images > batch else f"{batch}",
                steps=f"{SIZES[device]['steps_in']}/{SIZES[device]['steps_out']}", images_per_s=images / seconds)
    peak = peak_for(info["device"]) if device == "cuda" else None
    if peak is not None and mode == TrainConfig().mode:  # work_model.py counts RATIO's work
        info.update(mfu=FLOP_PER_PAIR * batch / seconds / peak.bf16_flops, mfu_peak_flops=peak.bf16_flops)
    if reference is not None:
        info["reference_s"] = reference
        info["speedup_vs_reference"] = reference / seconds
    benchmark.extra_info.update(info)


def engine_conv_precision(speed) -> str:
    """'fp32 (ieee)', 'bf16, first conv fp32 (ieee)' or 'bf16': the engine turns TF32 off itself (training/trainer.py)."""
    fp32 = f"fp32 ({'ieee' if speed.ieee_fp32_convs else 'tf32'})"
    if speed.amp_dtype is None:
        return fp32
    amp = str(speed.amp_dtype).replace("torch.", "")
    return f"{amp}, first conv {fp32}" if speed.fp32_first_conv else amp


def allow_recompiles(limit: int = 64) -> None:
    """The cases share one process: let every case's variants (precision, layout, shapes) stay
    compiled side by side. Past the default limit of 8 Dynamo would silently run a case eagerly;
    compiled code is reused across the cases' model instances, so compile time is paid once per
    variant, not per case."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def run_reference(benchmark, reference_medians, device):
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # for both sides: static shapes, pick the fastest convs
    run = reference_step(device)
    timing = TIMING[device]
    benchmark.pedantic(run, rounds=timing["rounds"], iterations=1, warmup_rounds=timing["warmup"])
    reference_medians[device, TrainConfig().mode, TrainConfig().norm] = benchmark.stats.stats.median
    describe(benchmark, device, benchmark.stats.stats.median, implementation="reference",
             conv_precision=f"fp32 ({fp32_conv_math(device)})")


def run_engine(benchmark, reference_medians, device, case, overrides, schedule_cache, measured_schedules):
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        allow_recompiles()
    mode = overrides.get("mode", TrainConfig().mode)
    reference = reference_seconds(reference_medians, device, mode, overrides.get("norm", TrainConfig().norm))
    schedule_from = SCHEDULE_FROM.get(case) if SCHEDULE_FROM.get(case) in measured_schedules else None
    if schedule_from is not None:
        overrides = {**overrides, "attack_schedule": measured_schedules[schedule_from]}
    cfg = config_for(device, **overrides)
    torch.manual_seed(0)
    trainer = RatioTrainer(create_model(cfg.arch), cfg, total_steps=1000, device=device, schedule_cache=schedule_cache)
    x, y, z = make_batch(device, cfg.batch_size)
    run = timed_step(lambda: trainer.step(x, y, z), device)
    timing = TIMING[device]
    began = time.perf_counter()
    with count_compiles() as compiled:
        run()  # the first step compiles, captures graphs and measures 'auto': reported, not timed
    first_step_s = time.perf_counter() - began
    measured_schedules[case] = trainer.attack_schedule
    benchmark.pedantic(run, rounds=timing["rounds"], iterations=1, warmup_rounds=timing["warmup"] - 1)
    choice = trainer.schedule_choice
    speed = trainer.speed
    describe(benchmark, device, benchmark.stats.stats.median, reference, implementation="engine", variant=case, mode=mode,
             first_step_s=first_step_s, **compiled, schedule=trainer.attack_schedule, schedule_from=schedule_from,
             schedule_timings_ms=choice.timings_ms if choice is not None else None,
             amp=str(speed.amp_dtype).replace("torch.", "") if speed.amp_dtype else "fp32",
             conv_precision=engine_conv_precision(speed),
             cuda_graphs=speed.cuda_graphs, compile=speed.compile, channels_last=speed.channels_last,
             fp32_first_conv=speed.fp32_first_conv, input_grad_only=speed.input_grad_only,
             fused_optimizer=speed.fused_optimizer, skipped=float(trainer.skipped_in_a_row))
    del run, trainer  # the graphs' memory pools go before the next case builds its own
    if device == "cuda":
        torch.cuda.empty_cache()


@pytest.mark.benchmark(group="ratio-step-cpu")
def test_ratio_step_cpu_reference(benchmark, reference_medians):
    run_reference(benchmark, reference_medians, "cpu")


@pytest.mark.benchmark(group="ratio-step-cpu")
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_ratio_step_cpu(benchmark, reference_medians, case, schedule_cache, measured_schedules):
    run_engine(benchmark, reference_medians, "cpu", case, CPU_CASES[case], schedule_cache, measured_schedules)


@pytest.mark.gpu
@pytest.mark.benchmark(group="ratio-step-gpu")
def test_ratio_step_gpu_reference(benchmark, reference_medians):
    run_reference(benchmark, reference_medians, "cuda")


@pytest.mark.gpu
@pytest.mark.benchmark(group="ratio-step-gpu")
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_ratio_step_gpu(benchmark, reference_medians, case, schedule_cache, measured_schedules):
    run_engine(benchmark, reference_medians, "cuda", case, GPU_CASES[case], schedule_cache, measured_schedules)
