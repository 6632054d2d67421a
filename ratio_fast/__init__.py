"""ratio-fast: RATIO training (L2 adversarial training on in- and out-distribution) made fast.

Public API:
    L2PGD, l2_pgd         the attack object and its functional form
    pgd_step              the bare fused projected L2 PGD step (ratio_fast.ops has the rest)
    RatioTrainer, TrainConfig
    create_model
"""
from .attacks import L2PGD, l2_pgd
from .config import TrainConfig
from .models import create_model
from .ops import pgd_step
from .train import RatioTrainer

__all__ = ["L2PGD", "l2_pgd", "pgd_step", "RatioTrainer", "TrainConfig", "create_model"]
__version__ = "0.1.0"
