"""Exponential moving average of a model's weights and BatchNorm buffers."""
from __future__ import annotations

import copy

import torch


class ModelEMA:
    """EMA with the authors' warm-up: decay_n = min(decay, (1 + n) / (10 + n)) at update n.

    Float parameters and buffers (BatchNorm running mean/var) are averaged; integer buffers
    (num_batches_tracked) are copied. The update count n lives on the device, so a step that
    the trainer skips (non-finite loss) can leave the EMA and its count exactly unchanged
    without a host sync. The update is a few foreach kernels.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        device = next(iter(self.model.state_dict().values()), torch.empty(0)).device
        self.count = torch.zeros((), device=device)  # n: updates applied so far (fp32 is exact to 2^24)
        self._pairs_of = None  # (source model, float pairs, other pairs), built on first update

    @property
    def updates(self) -> int:
        """Updates applied so far (reading it syncs with the device)."""
        return int(self.count)

    def _pairs(self, model):
        # Parameters and buffers are updated in place by the optimizer and BatchNorm, so the
        # tensor lists stay valid; building them once keeps the per-step cost at a few launches.
        if self._pairs_of is None or self._pairs_of[0] is not model:
            mine = list(self.model.state_dict(keep_vars=True).values())
            theirs = [t.detach() for t in model.state_dict(keep_vars=True).values()]
            floats = ([a for a, b in zip(mine, theirs) if a.is_floating_point()],
                      [b for a, b in zip(mine, theirs) if a.is_floating_point()])
            others = [(a, b) for a, b in zip(mine, theirs) if not a.is_floating_point()]
            self._pairs_of = (model, floats, others)
        return self._pairs_of[1], self._pairs_of[2]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, skip: torch.Tensor | None = None) -> None:
        """Move the average towards `model`; where `skip` (a 0/1 device scalar) is 1, change nothing."""
        n = self.count
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)
        if skip is not None:
            weight = weight * (1.0 - skip.reshape(()))
        floats, others = self._pairs(model)
        if floats[0]:
            # e += w * (m - e): with w = 0 every average stays bit-identical.
            steps = torch._foreach_sub(floats[1], floats[0])
            torch._foreach_mul_(steps, weight)
            torch._foreach_add_(floats[0], steps)
        for a, b in others:
            # The trainer restores the model's integer buffers of a skipped step before this.
            a.copy_(b)
        self.count += 1.0 if skip is None else 1.0 - skip.reshape(())

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.count.fill_(int(state["updates"]))
