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
  engine's, whose attacks freeze the weights. In eager mode freezing saves FLOPs only against
  code that asks for weight gradients too (a plain loss.backward(); --no-input-grad-only).
- Under torch.compile it does save them: AOTAutograd compiles one backward for every input that
  requires a gradient, and runs all of it whichever gradients autograd.grad asks for. With the
  weights requiring gradients the compiled backward of an attack iteration costs 2 F instead of
  F (counted from the compiled graphs: `compiled_attack_iteration_flops`). That is what the
  engine's --input-grad-only (default on) is for.
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
import json
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
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
# Host calls of an attack phase replayed from a CUDA graph (ratio_fast/attacks/cuda_graph.py): x, y and
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


def config(arch: str, batch: int, steps: tuple[int, int], **overrides) -> TrainConfig:
    """RATIO's settings in fp32, NCHW, eager, without graphs: what a CPU runs."""
    settings = dict(arch=arch, batch_size=batch, steps_in=steps[0], steps_out=steps[1], amp=False,
                    channels_last=False, compile=False, cuda_graphs=False)
    return TrainConfig(**{**settings, **overrides}).validate()


def reference(arch: str = ARCH, batch: int = BATCH, device="cpu", steps=(10, 20)):
    """(reference.py's RATIO, a batch (x, y, z)), its optimizer past the first step."""
    torch.manual_seed(0)
    ratio = ReferenceRatio(create_model(arch), config(arch, batch, steps), total_steps=1000, device=device)
    _create_momentum_buffers(ratio.optimizer)
    return ratio, make_batch(batch, device)


def engine(arch: str = ARCH, batch: int = BATCH, device="cpu", steps=(10, 20), **overrides):
    """(the engine's RatioTrainer with `overrides`, a batch (x, y, z))."""
    torch.manual_seed(0)
    trainer = RatioTrainer(create_model(arch), config(arch, batch, steps, **overrides), total_steps=1000, device=device)
    return trainer, make_batch(batch, device)


def clean_forward_flops(arch: str = ARCH, batch: int = BATCH) -> int:
    model = create_model(arch).eval()
    with torch.no_grad():
        return count(lambda: model(make_batch(batch)[0])).flops


def compiled_attack_iteration_flops(arch: str = ARCH, weights_require_grad: bool = False) -> dict[str, int]:
    """FLOPs per image of one attack iteration (forward, then autograd.grad(loss, x)) through
    torch.compile, counted in the forward and backward graphs AOTAutograd hands the compiler
    (the graphs Inductor would make kernels of), with or without the weights requiring grad."""
    graphs = {}

    def keep(kind):
        def compiler(graph_module, example_inputs):
            graphs[kind] = graph_module
            return make_boxed_func(graph_module)  # run as traced, in the calling convention AOTAutograd uses
        return compiler

    torch._dynamo.reset()
    model = create_model(arch).eval().requires_grad_(weights_require_grad)
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward")))
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    torch.autograd.grad(compiled(x).logsumexp(1).sum(), x)
    torch._dynamo.reset()
    return {kind: _graph_flops(graph) for kind, graph in graphs.items()}


def _graph_flops(graph_module: torch.fx.GraphModule) -> int:
    """FLOPs of an FX graph of aten ops, from the shapes its nodes record."""
    def value(arg):
        return arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg

    flops = 0
    for node in graph_module.graph.nodes:
        packet = getattr(node.target, "_overloadpacket", None)
        if node.op == "call_function" and packet in flop_registry:
            args, kwargs = torch.fx.node.map_arg(node.args, value), torch.fx.node.map_arg(node.kwargs, value)
            flops += flop_registry[packet](*args, **kwargs, out_val=node.meta["val"])
    return flops


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

    ratio, data = reference(arch, batch)
    out = [row("reference", "authors' code", count(lambda: ratio.step(*data)), count(lambda: ratio.attack(*data)),
               clean_forward_flops_per_image=clean_forward_flops(arch, batch) / batch)]
    for variant, overrides in ENGINE_VARIANTS.items():
        trainer, data = engine(arch, batch, **overrides)
        step, attack = count(lambda: trainer.step(*data)), count(lambda: trainer.adversarial_examples(*data))
        out.append(row("engine", variant, step, attack,
                       host_launches_per_step_cuda_graphs=step.calls - attack.calls + GRAPHED_PHASE_HOST_CALLS))
    for backend, variant in (("native", "fused"), ("torch", "plain torch ops")):
        out.append({**common, "case": f"work_model::pgd_update[{variant}]", "implementation": "pgd_update",
                    "variant": variant, "op_calls_per_iteration": pgd_update_calls(backend)})
    for weights_require_grad, variant in ((True, "weights require grad"), (False, "weights frozen")):
        flops = compiled_attack_iteration_flops(arch, weights_require_grad)
        out.append({**common, "case": f"work_model::compiled_attack_iteration[{variant}]", "batch": "1",
                    "implementation": "torch.compile (AOTAutograd graphs)", "variant": variant,
                    "forward_flops_per_image": flops["forward"], "backward_flops_per_image": flops["backward"]})
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
        shown = {k: v for k, v in r.items() if k.endswith(("flops_per_pair", "flops_per_image", "_per_step",
                                                           "_per_iteration", "_cuda_graphs"))}
        print(r["case"], json.dumps(shown))
    print(f"rows: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
