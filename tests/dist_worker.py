"""Scenarios run under torchrun by tests/test_distributed.py (gloo, CPU): `dist_worker.py SCENARIO OUT_DIR`.

Each rank writes what it saw to OUT_DIR/rank<r>.pt for the test to compare.
"""
import os
import signal
import sys

import torch
import torch.distributed as dist

from ratio_fast.training.distributed import DistContext, context_from_env, convert_sync_batchnorm, init_process_group
from ratio_fast.training.stop import StopRequest


def sync_batchnorm(ctx: DistContext, out: str) -> None:
    """Each rank normalizes its half of a fixed batch with the all-reduce BatchNorm."""
    torch.manual_seed(0)
    full = torch.randn(8, 3, 5, 5) * 3 + 1
    bn = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))
    with torch.no_grad():
        bn[0].weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn[0].bias.copy_(torch.tensor([0.0, -1.0, 0.3]))
    half = full.chunk(ctx.world_size)[ctx.rank].clone().requires_grad_(True)
    y = bn(half)
    (y * torch.arange(y.numel()).view_as(y).float().sin()).sum().backward()
    # weight grads are per-rank partial sums, like DDP's before its all-reduce
    grads = torch.stack([bn[0].weight.grad, bn[0].bias.grad])
    dist.all_reduce(grads)
    torch.save({"y": y.detach(), "x_grad": half.grad, "param_grads": grads, "running_mean": bn[0].running_mean,
                "running_var": bn[0].running_var}, os.path.join(out, f"rank{ctx.rank}.pt"))


def stop_agreement(ctx: DistContext, out: str) -> None:
    """Only rank 1 is signalled, after its 3rd step; every rank must stop after the same step."""
    stopped_after = None
    with StopRequest(ctx) as stop:
        for step in range(1, 50):
            if ctx.rank == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            if stop.at_step_boundary():
                stopped_after = step
                break
    torch.save({"stopped_after": stopped_after}, os.path.join(out, f"rank{ctx.rank}.pt"))


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], sys.argv[2]
    context = context_from_env()
    init_process_group(context, torch.device("cpu"))
    {"sync_batchnorm": sync_batchnorm, "stop_agreement": stop_agreement}[scenario](context, out_dir)
    dist.destroy_process_group()
