"""A model's train/eval mode switched for one block and then restored."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module):
    """Run the block with `model` in eval mode (BatchNorm on its running statistics, samples
    independent), then give it back the mode it had, also when the block raises.

    It only sets Python attributes, no device work: usable inside a CUDA-graph capture.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
