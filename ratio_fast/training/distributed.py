"""torch.distributed under torchrun: who this process is, its device, its process group, and SyncBatchNorm.

    torchrun --nproc_per_node=8 -m ratio_fast.cli train ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single process and
nothing here touches torch.distributed. NCCL serves CUDA runs, gloo CPU runs (which is how
the multi-process tests run on machines without a GPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env(env=os.environ) -> DistContext:
    """The torchrun variables, validated; a single process when they are absent."""
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = env.get(name)
        if raw is None:
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise UserError(f"environment variable {name}={raw!r} is not an integer (is torchrun setting it?)") from None
    world_size = values.get("WORLD_SIZE", 1)
    rank = values.get("RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"environment: RANK={rank} does not fit WORLD_SIZE={world_size}")
    return DistContext(rank=rank, world_size=world_size, local_rank=values.get("LOCAL_RANK", 0))


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """The --device value as a torch.device; under torchrun, CUDA means this rank's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: '{name}' is not a device (try cpu, cuda or cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device (use --device cpu)")
    if device.type == "cuda" and ctx is not None and ctx.is_distributed:
        if ctx.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {ctx.local_rank}: this node has only {torch.cuda.device_count()} GPUs "
                            "(lower --nproc_per_node)")
        device = torch.device("cuda", ctx.local_rank)
    return device


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    """Join the job's process group (NCCL for CUDA, gloo for CPU) when there is more than one rank."""
    if ctx.is_distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm whose training statistics span all ranks, so N ranks normalize like one GPU.

    torch's SyncBatchNorm runs on CUDA only; on CPU (gloo) the layers become AllReduceBatchNorm2d.
    Parameter and buffer names are unchanged, so checkpoints stay interchangeable.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(model, name, AllReduceBatchNorm2d.from_batchnorm(child))
        else:
            convert_sync_batchnorm(child, device)
    return model


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics all-reduced (with autograd) over the default process group."""

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "AllReduceBatchNorm2d":
        if bn.momentum is None or not bn.track_running_stats:
            raise ValueError("AllReduceBatchNorm2d needs a BatchNorm with momentum and running statistics")
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        return new.to(bn.weight.device if bn.affine else bn.running_mean.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=torch.float32, device=x.device)
        local = torch.cat([x.float().sum((0, 2, 3)), x.float().square().sum((0, 2, 3)), count])
        total = dist_fn.all_reduce(local)  # differentiable: gradients flow to every rank's batch
        c = self.num_features
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean.square()).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            unbiased = var.detach() * n / (n - 1).clamp_min(1)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        shape = (1, c, 1, 1)
        out = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def all_reduce_mean(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, torch.Tensor]:
    """Average a dict of 0-dim tensors over the ranks in one collective (identity for one process)."""
    if not ctx.is_distributed or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].float() for k in keys])
    dist.all_reduce(stacked)
    stacked /= ctx.world_size
    return dict(zip(keys, stacked.unbind()))


__all__ = ["AllReduceBatchNorm2d", "DistContext", "all_reduce_mean", "context_from_env",
           "convert_sync_batchnorm", "init_process_group", "resolve_device", "shutdown"]
