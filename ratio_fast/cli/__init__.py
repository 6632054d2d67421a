"""The command line: `ratio-fast train | eval | counterfactuals | export` (`python -m ratio_fast.cli`),
the training run behind `train`, settings files and the torchrun launcher."""
from .main import main

__all__ = ["main"]
