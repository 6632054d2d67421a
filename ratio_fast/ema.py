"""Exponential moving average of a model's weights and BatchNorm buffers."""
from __future__ import annotations

import copy

import torch


class ModelEMA:
    """EMA with the authors' warm-up: decay_n = min(decay, (1 + n) / (10 + n)) at update n.

    Float parameters and buffers (BatchNorm running mean/var) are averaged; integer buffers
    (num_batches_tracked) are copied. The update is two foreach kernels, no host sync.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pairs_of = None  # (source model, float pairs, other pairs), built on first update

    def _pairs(self, model):
        # Parameters and buffers are updated in place by the optimizer and BatchNorm, so the
        # tensor lists stay valid; building them once keeps the per-step cost at two launches.
        if self._pairs_of is None or self._pairs_of[0] is not model:
            mine = list(self.model.state_dict(keep_vars=True).values())
            theirs = [t.detach() for t in model.state_dict(keep_vars=True).values()]
            floats = ([a for a, b in zip(mine, theirs) if a.is_floating_point()],
                      [b for a, b in zip(mine, theirs) if a.is_floating_point()])
            others = [(a, b) for a, b in zip(mine, theirs) if not a.is_floating_point()]
            self._pairs_of = (model, floats, others)
        return self._pairs_of[1], self._pairs_of[2]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats, others = self._pairs(model)
        if floats[0]:
            torch._foreach_lerp_(floats[0], floats[1], 1.0 - decay)
        for a, b in others:
            a.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
