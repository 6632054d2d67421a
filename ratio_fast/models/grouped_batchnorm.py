"""BatchNorm over equal groups of the batch, as nn.DataParallel on several GPUs computes it.

Why: the authors train with `nn.DataParallel` on two GPUs (`--gpu 0 1` in the commands of
their README), and their first README warns that results vary with the number of devices, since
it changes the samples each device's BatchNorm normalizes over. DataParallel cuts the batch into
contiguous chunks, one per GPU; their train forward interleaves the in- and out-distribution
batches (x0 z0 x1 z1 ...: `interleave_forward` in utils/train_types/helpers.py), so GPU g gets
x and z images g*n .. (g+1)*n - 1 (n = 64 of their 128 + 128). Each replica normalizes with
the statistics of its own chunk, and only the first replica's running statistics survive (the
replica on the first device shares the module's buffers; the others' updates are thrown away).
One GPU normalizing over all 256 images trains a (slightly) different model; `--bn-groups 2`
trains theirs.

The layout (one place for it): with `groups` G, group g of the train forward's joint batch is
rows g*(nx+nz) .. (g+1)*(nx+nz) - 1, holding x[g*nx:(g+1)*nx] then z[g*nz:(g+1)*nz]
(`grouped_joint_batch`; `split_grouped_logits` undoes it). With G = 1 that is
torch.cat([x, z]), bit for bit. Under torchrun each process cuts its own slice of the global
batch again, so P processes without --sync-bn normalize over P x G groups.

How: one call of torch's BatchNorm on the groups side by side as channels, (n, G*C, H, W), so
the statistics, the fp32 math under autocast, the running-statistics update and the memory kept
for backward are torch's own. The copies in and out read and write the activation once more
each, forward and backward (a view would need the groups interleaved in an NCHW batch, and
channels_last has no such view). No host synchronization and no Python branch on tensor values: torch.compile
(fullgraph=True) and CUDA graph capture take it. Eval mode (the attacks, evaluation) is plain
BatchNorm on the running statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GroupedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are per group of `groups` equal, contiguous slices of
    the batch; the running statistics follow the first group only. State dict: BatchNorm2d's."""

    groups: int = 1  # a class attribute too, so a BatchNorm2d whose class is swapped has it

    def __init__(self, num_features: int, groups: int = 1, **batchnorm_args):
        super().__init__(num_features, **batchnorm_args)
        self.groups = _checked_groups(groups)
        _check_running_statistics(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups == 1:
            return super().forward(x)
        self._check_input_dim(x)
        groups, channels = self.groups, x.shape[1]
        _group_size(x.shape[0], groups)
        # torch's own BatchNorm on the groups side by side as channels: its statistics, its fp32
        # math under autocast, its running-statistics update (kept for the first group's channels)
        running_mean, running_var = self.running_mean.repeat(groups), self.running_var.repeat(groups)
        out = F.batch_norm(_side_by_side(x, groups), running_mean, running_var,
                           self.weight.repeat(groups) if self.affine else None,
                           self.bias.repeat(groups) if self.affine else None, True, self.momentum, self.eps)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.copy_(running_mean[:channels])
            self.running_var.copy_(running_var[:channels])
        return _one_below_another(out, groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"


def group_batchnorm(model: nn.Module, groups: int) -> nn.Module:
    """Make every nn.BatchNorm2d of `model` a GroupedBatchNorm2d of `groups`, in place; returns
    the model. The class is swapped, not the module wrapped, so names, state_dict and
    checkpoints stay as they were. groups == 1 leaves the model untouched."""
    _checked_groups(groups)
    if groups == 1:
        return model
    found = False
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            _check_running_statistics(module)
            module.__class__ = GroupedBatchNorm2d
        elif isinstance(module, _BatchNorm) and not isinstance(module, GroupedBatchNorm2d):
            raise ValueError(f"cannot group the statistics of a {type(module).__name__} (only nn.BatchNorm2d)")
        if isinstance(module, GroupedBatchNorm2d):
            module.groups = groups
            found = True
    if not found:
        raise ValueError(f"{type(model).__name__} has no BatchNorm2d whose statistics could be grouped")
    return model


def grouped_batch(parts: list[torch.Tensor], groups: int) -> torch.Tensor:
    """The train forward's batch of several parts (x, x_adv, z, z_adv: those a --mode trains on):
    group g is each part's g-th slice in turn (module docstring); one part as it is.
    groups == 1: torch.cat(parts)."""
    if len(parts) == 1:
        return parts[0]
    for batch in parts:
        _group_size(batch.shape[0], groups)
    return torch.cat([chunk for slices in zip(*(part.chunk(groups) for part in parts)) for chunk in slices])


def split_grouped(logits: torch.Tensor, sizes: list[int], groups: int) -> list[torch.Tensor]:
    """The logits of each part of grouped_batch(parts, groups), in its part's order; `sizes`:
    the parts' numbers of images."""
    if len(sizes) == 1:
        return [logits]
    per_group = logits.unflatten(0, (groups, -1))
    return [part.flatten(0, 1) for part in per_group.split([size // groups for size in sizes], dim=1)]


def grouped_joint_batch(x: torch.Tensor, z: torch.Tensor | None, groups: int) -> torch.Tensor:
    """grouped_batch of x and z (x alone when there is no z)."""
    return grouped_batch([x] if z is None else [x, z], groups)


def split_grouped_logits(logits: torch.Tensor, n_in: int, groups: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits of x, logits of z or None) from the logits of grouped_joint_batch(x, z, groups)
    where x has n_in images."""
    if logits.shape[0] == n_in:
        return logits, None
    logits_in, logits_out = split_grouped(logits, [n_in, logits.shape[0] - n_in], groups)
    return logits_in, logits_out


def _side_by_side(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(G*n, C, H, W) -> (n, G*C, H, W): group g's images as channels g*C .. (g+1)*C - 1, in x's
    memory format (one copy)."""
    if _is_channels_last(x):  # work on the NHWC tensor channels_last stores
        nhwc = x.permute(0, 2, 3, 1).unflatten(0, (groups, -1))  # (G, n, H, W, C)
        return nhwc.permute(1, 2, 3, 0, 4).flatten(3).permute(0, 3, 1, 2)
    return x.unflatten(0, (groups, -1)).transpose(0, 1).flatten(1, 2)


def _one_below_another(wide: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of _side_by_side: (n, G*C, H, W) -> (G*n, C, H, W), in wide's memory format."""
    if _is_channels_last(wide):
        nhwc = wide.permute(0, 2, 3, 1).unflatten(3, (groups, -1))  # (n, H, W, G, C)
        return nhwc.permute(3, 0, 1, 2, 4).flatten(0, 1).permute(0, 3, 1, 2)
    return wide.unflatten(1, (groups, -1)).transpose(0, 1).flatten(0, 1)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _group_size(batch: int, groups: int) -> int:
    if batch % groups:
        raise ValueError(f"a batch of {batch} images cannot be cut into {groups} equal BatchNorm groups")
    return batch // groups


def _checked_groups(groups) -> int:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return groups


def _check_running_statistics(bn: nn.BatchNorm2d) -> None:
    if bn.momentum is None or not bn.track_running_stats:
        raise ValueError("grouped BatchNorm needs a BatchNorm2d with a momentum and running statistics")
