"""What the fast path compiles before its first RATIO step of WRN-34-10, counted on the CPU.

    python3 bench/cold_start.py --commit <sha>     # every variant -> bench/results/<date>-cold-start.jsonl

The engine's fast settings (torch.compile, bf16 autocast with the first convolution in fp32,
channels_last; CUDA graphs are GPU-only and compile nothing of their own) on WRN-34-10, one
RATIO step, each variant in a fresh process with an empty Inductor cache. Every torch.compile
graph is put down to the model call that compiled it: the clean forward (eval, no grad), the
attacks' forward and backward (eval, frozen weights, batch B, and 2B under the concatenated
schedule) and their last forward without grad, the training forward and backward (train mode,
2B). Variants (VARIANTS):
    auto         attack schedule 'auto': both candidates run on the first batch, so the attack
                 graphs are compiled for B and for 2B (the engine's default, and what the
                 benchmark's fast case did before it took the no-compile case's schedule)
    concat       the schedule given, as the benchmark's fast case now takes the one the
    streams      no-compile case measured (on a CPU streams run one after the other)
    regional     'auto' with each residual block compiled on its own, the compiled code shared by
                 the blocks of the same shape (torch's "regional compilation")
    dynamic      'auto' with the batch dimension of the model's input marked dynamic
                 (torch._dynamo.mark_dynamic) instead of dynamic=False: one graph for B and 2B.
                 AOTAutograd compiles a backward whose saved tensors have symbolic sizes together
                 with its forward, so `backward_graphs` is 0 here and `compile_s` holds both

Batch B = 4 and 1/1 attack steps: with dynamic=False every batch size is a graph of its own
and the attack loop reuses its graphs, so the counts are those of 128 (256) and 10/20 steps;
the seconds are this CPU's (Inductor's C++ code instead of Triton kernels). A row per variant:
`compiled_graphs` and `backward_graphs`, `compile_s` (Dynamo, AOTAutograd and Inductor, forward
and backward) and `kernel_wait_s` (the part spent waiting for the kernels' compilers),
`first_step_s`, `second_step_s`, `calls` (per model call that compiled: what it was, its graphs
and seconds) and the machine's 5-minute load average (`load_average_5min`, with `cpus`): those
seconds are wall-clock, so on a shared machine they grow with the load. The CPU seconds do not:
`first_step_cpu_s` and `second_step_cpu_s` (this process: tracing, lowering and the step's own
work) and `kernel_compile_cpu_s` (the kernel compilers' worker processes, g++ here).
`count_compiles` also gives the GPU benchmark's fast case its `compiled_graphs`.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
from torch._dynamo.utils import compilation_time_metrics, get_compilation_metrics, set_compilation_metrics_limit
from torch._inductor.async_compile import shutdown_compile_workers

from gpu_check import append_rows, machine
from ratio_fast import RatioTrainer, TrainConfig, create_model
from ratio_fast.models.wide_resnet import BasicBlock

RESULTS = Path(__file__).resolve().parent / "results"
ARCH, BATCH, STEPS = "wrn34", 4, 1
VARIANTS = ("auto", "concat", "streams", "regional", "dynamic")
METRICS_KEPT = 10_000  # torch keeps the last 64 compilations' metrics by default


@contextlib.contextmanager
def count_compiles() -> Iterator[dict]:
    """Inside: what torch.compile compiles is counted. After: {'compiled_graphs': forward graphs,
    'backward_graphs': their compiled backwards, 'compile_s': seconds of both, 'kernel_wait_s': the
    part of them spent waiting for the kernels' compilers (g++ here, Triton on a GPU), which run in
    a pool of worker processes, one per CPU}."""
    set_compilation_metrics_limit(max(METRICS_KEPT, len(get_compilation_metrics())))
    before, waited = len(get_compilation_metrics()), kernel_wait_s()
    counts = {}
    try:
        yield counts
    finally:
        counts.update(summary(get_compilation_metrics()[before:]), kernel_wait_s=round(kernel_wait_s() - waited, 1))


def kernel_wait_s() -> float:
    """Seconds Inductor has waited for its kernel compilers in this process so far."""
    return sum(compilation_time_metrics.get("async_compile.wait", ()))


def summary(metrics) -> dict:
    forward = [m for m in metrics if m.is_forward and m.graph_op_count is not None]
    backward = [m for m in metrics if m.is_forward is False]
    seconds = sum(m.entire_frame_compile_time_s or 0 for m in forward)
    seconds += sum((m.backward_cumulative_compile_time_us or 0) / 1e6 for m in backward)
    return {"compiled_graphs": len(forward), "backward_graphs": len(backward), "compile_s": round(seconds, 1)}


COMPILE = torch.compile  # the real one, before a variant replaces what the trainer calls


def compiling_blocks(model, **options):
    """torch.compile as the trainer calls it, made regional: each residual block is compiled in place
    (compiled code is kept per code object, so the blocks of one shape share it); the model itself stays."""
    torch._dynamo.config.recompile_limit = 256  # 15 blocks of 6 shapes, times the call variants
    for module in model.modules():
        if isinstance(module, BasicBlock):  # what module.compile() does, which would call this function
            module._compiled_call_impl = COMPILE(module._call_impl, **options)
    return model


def compiling_with_dynamic_batch(model, **options):
    """torch.compile as the trainer calls it, with the batch dimension of every input marked dynamic
    (and no other: dynamic=True would make the image's sides symbolic too)."""
    compiled = COMPILE(model, **{**options, "dynamic": None})
    compiled.register_forward_pre_hook(lambda module, args: torch._dynamo.mark_dynamic(args[0], 0))
    return compiled


COMPILERS = {"regional": compiling_blocks, "dynamic": compiling_with_dynamic_batch}  # default: torch.compile


def measure(variant: str, batch: int = BATCH, steps: int = STEPS, arch: str = ARCH) -> dict:
    """One variant's row. Compiles from scratch in this process (main() gives each variant a fresh
    one, with an empty Inductor cache too)."""
    torch._dynamo.reset()
    previous, torch.compile = torch.compile, COMPILERS.get(variant, torch.compile)  # what the trainer calls
    try:
        return _measure(variant, batch, steps, arch)
    finally:
        torch.compile = previous


def _measure(variant: str, batch: int, steps: int, arch: str) -> dict:
    schedule = variant if variant in ("concat", "streams") else "auto"
    cfg = TrainConfig(arch=arch, batch_size=batch, steps_in=steps, steps_out=steps, compile=True, amp=True,
                      channels_last=True, cuda_graphs=False, attack_schedule=schedule).validate()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y, z = torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g), \
        torch.rand(batch, 3, 32, 32, generator=g)
    with tempfile.TemporaryDirectory() as cache:
        trainer = RatioTrainer(create_model(arch), cfg, total_steps=10, device="cpu", schedule_timer=wall_clock,
                               schedule_cache=Path(cache) / "attack_schedule.json")
        calls = attribute_compiles(trainer.forward_model, trainer)
        with count_compiles() as counts:
            first, first_cpu = timed(lambda: trainer.step(x, y, z))
            calls.close()
    second, second_cpu = timed(lambda: trainer.step(x, y, z))
    shutdown_compile_workers()  # reaped, their CPU time (and that of the g++ they ran) is counted below
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"case": f"cold_start::{variant}", "variant": variant, "model": arch, "batch": f"{batch}+{batch}",
            "steps": f"{steps}/{steps}", "schedule": trainer.attack_schedule, **counts, "first_step_s": round(first, 1),
            "second_step_s": round(second, 2), "first_step_cpu_s": round(first_cpu, 1),
            "second_step_cpu_s": round(second_cpu, 2),
            "kernel_compile_cpu_s": round(children.ru_utime + children.ru_stime, 1), "calls": calls.compiled}


def timed(run) -> tuple[float, float]:
    """(wall-clock seconds, this process's CPU seconds) of run(): the CPU seconds do not grow with
    the machine's load, the wall-clock ones do."""
    began, began_cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - began, time.process_time() - began_cpu


def wall_clock(name, run) -> float:
    """The schedule timer on a CPU (the engine's default needs CUDA): seconds of one call."""
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


class attribute_compiles:
    """Puts each compilation down to the call of `module` during (or, for a backward, after) which
    it happened: `compiled` lists the calls that compiled, with their graphs and seconds."""

    def __init__(self, module, trainer):
        self.compiled, self._trainer, self._current = [], trainer, None
        self._hook = module.register_forward_pre_hook(self._before_call)

    def _before_call(self, module, args):
        self._settle()
        x, model = args[0], self._trainer.model
        frozen = not next(model.parameters()).requires_grad
        what = (f"batch {x.shape[0]}, {'train' if model.training else 'eval'}, "
                f"{'grad' if torch.is_grad_enabled() else 'no grad'}{', weights frozen' if frozen else ''}")
        self._current = (what, len(get_compilation_metrics()))

    def _settle(self):
        if self._current is not None:
            what, before = self._current
            compiled = summary(get_compilation_metrics()[before:])
            if compiled["compiled_graphs"] or compiled["backward_graphs"]:
                self.compiled.append({"call": what, **compiled})
        self._current = None

    def close(self):
        self._settle()
        self._hook.remove()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="torch.compile graphs and seconds before the first RATIO step (CPU)")
    p.add_argument("--out", default=str(RESULTS), help="folder for <date>-cold-start.jsonl")
    p.add_argument("--commit", default=None, help="commit of the code measured (default: git HEAD)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one variant, print its row
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.batch)))
        return 0
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True, cwd=RESULTS).stdout.strip() or "unknown"
    common = {**machine(), "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    path = Path(args.out) / f"{common['date'][:10]}-cold-start.jsonl"
    path.unlink(missing_ok=True)  # this run's rows only
    for variant in args.variants.split(","):
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:  # a cold start: nothing compiled before
            done = subprocess.run([sys.executable, __file__, "--one", variant, "--batch", str(args.batch)],
                                  env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{variant}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        # The seconds are wall-clock: on a shared machine they say as much as the load beside them.
        row = {**common, **json.loads(done.stdout.splitlines()[-1]), "cpus": os.cpu_count(),
               "load_average_5min": round(os.getloadavg()[1], 1)}
        append_rows(path, [row])
        print(f"{variant:9} {row['compiled_graphs']:3} graphs + {row['backward_graphs']:2} backward, compile "
              f"{row['compile_s']:6.1f} s, first step {row['first_step_s']:6.1f} s, then {row['second_step_s']:.2f} s "
              f"({row['schedule']}; load {row['load_average_5min']} on {row['cpus']} CPUs)", flush=True)
    print(f"rows: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
