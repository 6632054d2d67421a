"""The work of one RATIO step, counted rather than timed: FLOPs and operator calls of the engine
and of the plain reference (reference.py, the authors' way), on a CPU.

    python3 bench/work_model.py --commit <sha>    # WRN-34-10, batch 2+2, 10/20 steps -> bench/results/

FLOPs are what torch.utils.flop_counter's formulas give for every aten op that runs (the formulas
FlopCounterMode uses; FlopCounterMode itself cannot be used here: its per-module tracker puts
autograd hooks on the model's input, and torch.autograd.grad on that leaf then raises, in torch
2.13). A convolution's backward is counted for the gradients autograd asks of it: input, weight,
or both. Operator calls are the aten ops below autograd that compute something: views and bare
allocations launch nothing and are left out; on a GPU every other call is at least one kernel
launch. Both are the same on any device for the same shapes; the FLOPs scale with the batch,
the operator calls do not.

What the counts show (bench/results/*-work-model.jsonl, README "Benchmarks"):
- `torch.autograd.grad(loss, x)`, which the authors' ArgminPGD and reference.py call with the
  weights still requiring gradients, already computes input gradients only: PyTorch asks the
  convolution backward for (input, no weight, no bias). The reference's attack FLOPs equal the
  engine's, whose attacks freeze the weights. Freezing saves FLOPs only against code that asks
  for weight gradients too (a plain loss.backward(); the engine's --no-input-grad-only).
- The attack schedule (sequential or one concatenated batch), the fused PGD step and CUDA graphs
  change the number of operator calls and host launches, not the FLOPs.

MFU numerator. Useful FLOPs per (in, out) pair of WRN-34-10 at 32x32, 10 / 20 attack steps, in
forward passes F (13.3 GFLOP per image), with a backward pass costing F per gradient asked for:
    in attack   10 x (F forward + F input gradient) + F (score of the last iterate)   21 F
    out attack  20 x (F + F) + F                                                      41 F
    train step  2 images x (F forward + 2 F for the input and weight gradients)        6 F
    total 68 F ~ 906 GFLOP (shared/GPU.md): FLOP_PER_PAIR. The reference counted here gives
905.6 GFLOP (tests/test_work_model.py checks the agreement within 2 %). The engine adds one
clean-accuracy forward per in-distribution image (1 F), not counted as useful.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from gpu_check import append_rows, machine
from ratio_fast import RatioTrainer, TrainConfig, create_model
from ratio_fast.ops import pgd_step
from reference import ReferenceRatio

FLOP_PER_PAIR = 906e9  # useful FLOPs of one RATIO step per (in, out) pair: WRN-34-10, 32x32, 10/20 steps
ARCH, BATCH = "wrn34", 2
RESULTS = Path(__file__).resolve().parent / "results"

# The engine as it runs on a GPU, less what a CPU cannot do (bf16 tensor cores, channels_last,
# compile, CUDA graphs: none changes the FLOPs; graphs are accounted for below), one switch each.
ENGINE_VARIANTS = {
    "sequential, fused step": dict(attack_schedule="sequential", backend="native"),
    "concat, fused step": dict(attack_schedule="concat", backend="native"),
    "weight grads in attacks": dict(attack_schedule="sequential", backend="native", input_grad_only=False),
}
# Host calls of an attack phase replayed from a CUDA graph (ratio_fast/cuda_graph.py): x, y and
# z copied into the graph's static inputs, then one replay.
GRAPHED_PHASE_HOST_CALLS = 4
# Allocations without a kernel (views are recognized by their schema).
_ALLOCATIONS = {torch.ops.aten.empty, torch.ops.aten.empty_strided, torch.ops.aten.empty_like}


@dataclass
class Work:
    flops: int = 0
    op_calls: Counter = field(default_factory=Counter)  # aten op name -> calls

    @property
    def calls(self) -> int:
        return sum(self.op_calls.values())


class WorkCounter(TorchDispatchMode):
    """Counts into `work` the FLOPs and operator calls of everything run inside."""

    def __init__(self, work: Work):
        super().__init__()
        self.work = work

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.work.flops += flop_registry[packet](*args, **kwargs, out_val=out)
        if not func.is_view and packet not in _ALLOCATIONS:
            self.work.op_calls[str(packet)] += 1
        return out


def count(fn) -> Work:
    work = Work()
    with WorkCounter(work):
        fn()
    return work


def make_batch(batch: int, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x, z = torch.rand(batch, 3, 32, 32, generator=g), torch.rand(batch, 3, 32, 32, generator=g)
    return x.to(device), torch.randint(0, 10, (batch,), generator=g).to(device), z.to(device)


def config(arch: str, batch: int, **overrides) -> TrainConfig:
    """RATIO's defaults (10/20 steps) in fp32, NCHW, eager, without graphs: what a CPU runs."""
    settings = dict(arch=arch, batch_size=batch, amp=False, channels_last=False, compile=False, cuda_graphs=False)
    return TrainConfig(**{**settings, **overrides}).validate()


def reference_work(arch: str = ARCH, batch: int = BATCH, device="cpu") -> tuple[Work, Work]:
    """(one step, its attack phase) of reference.py, with its optimizer past the first step."""
    torch.manual_seed(0)
    reference = ReferenceRatio(create_model(arch), config(arch, batch), total_steps=1000, device=device)
    _create_momentum_buffers(reference.optimizer)
    x, y, z = make_batch(batch, device)
    return count(lambda: reference.step(x, y, z)), count(lambda: reference.attack(x, y, z))


def engine_work(arch: str = ARCH, batch: int = BATCH, device="cpu", **overrides) -> tuple[Work, Work]:
    """(one step, its attack phase) of the engine; the phase includes the clean-accuracy forward."""
    torch.manual_seed(0)
    trainer = RatioTrainer(create_model(arch), config(arch, batch, **overrides), total_steps=1000, device=device)
    x, y, z = make_batch(batch, device)
    return count(lambda: trainer.step(x, y, z)), count(lambda: trainer.adversarial_examples(x, y, z))


def clean_forward_flops(arch: str = ARCH, batch: int = BATCH) -> int:
    model = create_model(arch).eval()
    with torch.no_grad():
        return count(lambda: model(make_batch(batch)[0])).flops


def pgd_update_calls(backend: str) -> int:
    """Operator calls of one projected PGD update with momentum, as the attack loop makes it (per-sample
    eps and step size built once before the loop): 'native' is the fused kernel, 'torch' the same
    update in plain torch ops."""
    x, _, _ = make_batch(2)
    delta, grad, velocity = torch.randn_like(x) * 0.01, torch.randn_like(x), torch.zeros_like(x)
    eps, step_size = torch.full((2,), 0.5), torch.full((2,), 0.1)
    return count(lambda: pgd_step(x, delta, grad, eps, step_size, velocity, momentum=0.9, backend=backend)).calls


def _create_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """SGD makes its momentum buffers in its first step (a clone instead of the in-place update of
    every later step): make them now, as the engine does, so both are counted in a later step."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)


def rows(arch: str = ARCH, batch: int = BATCH, commit: str = "unknown") -> list[dict]:
    common = {**machine(), "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "model": arch, "batch": f"{batch}+{batch}", "steps": "10/20", "precision": "fp32", "layout": "NCHW",
              "flop_per_pair_constant": FLOP_PER_PAIR}

    def row(implementation, variant, step: Work, attack: Work, **extra):
        return {**common, "case": f"work_model::{implementation}[{variant}]", "implementation": implementation,
                "variant": variant, "flops_per_pair": step.flops / batch, "attack_flops_per_pair": attack.flops / batch,
                "op_calls_per_step": step.calls, "attack_op_calls_per_step": attack.calls,
                "top_op_calls": dict(step.op_calls.most_common(12)), **extra}

    out = [row("reference", "authors' code", *reference_work(arch, batch))]
    for variant, overrides in ENGINE_VARIANTS.items():
        step, attack = engine_work(arch, batch, **overrides)
        out.append(row("engine", variant, step, attack,
                       host_launches_per_step_cuda_graphs=step.calls - attack.calls + GRAPHED_PHASE_HOST_CALLS))
    out[0]["clean_forward_flops_per_image"] = clean_forward_flops(arch, batch) / batch
    for backend, variant in (("native", "fused"), ("torch", "plain torch ops")):
        out.append({**common, "case": f"work_model::pgd_update[{variant}]", "implementation": "pgd_update",
                    "variant": variant, "op_calls_per_iteration": pgd_update_calls(backend)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="FLOPs and operator calls of one RATIO step, engine and reference")
    p.add_argument("--out", default=str(RESULTS), help="folder for <date>-work-model.jsonl")
    p.add_argument("--commit", default=None, help="commit of the code counted (default: git HEAD)")
    p.add_argument("--arch", default=ARCH)
    p.add_argument("--batch", type=int, default=BATCH, help="in- and out-distribution images each")
    args = p.parse_args(argv)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True, cwd=RESULTS).stdout.strip() or "unknown"
    measured = rows(args.arch, args.batch, commit)
    path = Path(args.out) / f"{measured[0]['date'][:10]}-work-model.jsonl"
    path.unlink(missing_ok=True)
    append_rows(path, measured)
    for r in measured:
        flops = f"{r['flops_per_pair'] / 1e9:7.1f} GFLOP/pair" if "flops_per_pair" in r else " " * 18
        calls = r.get("op_calls_per_step", r.get("op_calls_per_iteration"))
        print(f"{r['case']:52} {flops} {calls:6d} op calls")
    print(f"rows: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
