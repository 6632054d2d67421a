"""Replay a function of device tensors from a CUDA graph, captured once per input signature.

    graphed = GraphedCall(attack_phase)      # attack_phase(x, y, z) -> tuple of tensors
    outputs = graphed(x, y, z)               # first call per shape: warm up, capture; then replay

A RATIO attack is ~30 forward and backward passes of a batch of 128: a few thousand kernel
launches whose CPU cost is comparable to their GPU time. Replaying them as one graph removes
that cost. What makes it valid to capture once and replay every step:
- the function has no host synchronization and no data-dependent Python branches (the attacks'
  contract), so one capture records everything it does;
- the weights, BatchNorm statistics and optimizer all update their tensors in place, so the
  graph, which holds their addresses, reads the current values at every replay;
- inputs are copied into static tensors captured with the graph; outputs are static tensors
  too, overwritten by the next replay, so use (or copy) them before calling again.
Shapes must stay fixed (drop_last loaders); a new signature captures a new graph.
"""
from __future__ import annotations

from typing import Callable

import torch


def _signature(args) -> tuple:
    return tuple(None if a is None else (tuple(a.shape), a.stride(), a.dtype, a.device) for a in args)


class GraphedCall:
    """fn(*tensors) -> tuple of tensors (None allowed on both sides), replayed from a CUDA graph."""

    def __init__(self, fn: Callable[..., tuple], warmup: int = 2):
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple, tuple] = {}  # signature -> (static inputs, static outputs, graph)

    def __call__(self, *args: torch.Tensor | None) -> tuple:
        key = _signature(args)
        if key not in self._graphs:
            self._graphs[key] = self._capture(args)
        static_inputs, static_outputs, graph = self._graphs[key]
        for static, arg in zip(static_inputs, args):
            if static is not None:
                static.copy_(arg)
        graph.replay()
        return static_outputs

    def _capture(self, args) -> tuple:
        static_inputs = tuple(None if a is None else a.detach().clone() for a in args)  # clone keeps strides
        # Warm-up on a side stream, as capture requires: it builds the cuDNN/cuBLAS plans, compiles
        # Triton and torch.compile kernels and lets autograd set up before anything is recorded.
        side = torch.cuda.Stream(device=static_inputs[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outputs = self.fn(*static_inputs)
        return static_inputs, static_outputs, graph
