"""ratio-fast: RATIO training (L2 adversarial training on in- and out-distribution) made fast.

Public API:
    PGD, pgd              PGD in either norm (norm="l2" or "linf"): the attack object and its functional form
    L2PGD, l2_pgd         PGD in L2
    LinfPGD               PGD in L-infinity, by default Madry et al.'s (8/255, step 2/255, 10 steps)
    joint_pgd             in- and out-distribution attacks as one concatenated batch (joint_l2_pgd: its old name)
    APGD, APGDTargeted    APGD (Croce & Hein 2020) on the same fused ops, norm="l2" or "linf"
    pgd_step              the bare fused projected PGD step (ratio_fast.ops has the rest)
    RatioTrainer, TrainConfig
    create_model
    load_run              a trained run: model (chosen weights), settings, metrics
    evaluate              `ratio-fast eval`'s protocol on any nn.Module of [0, 1] images
"""
from .attacks.apgd import APGD, APGDTargeted
from .attacks.pgd import PGD, L2PGD, LinfPGD, joint_l2_pgd, joint_pgd, l2_pgd, pgd
from .config import TrainConfig
from .models import create_model
from .ops import pgd_step
from .training.trainer import RatioTrainer
from .version import __version__

__all__ = ["APGD", "APGDTargeted", "PGD", "L2PGD", "LinfPGD", "joint_pgd", "joint_l2_pgd", "l2_pgd", "pgd", "pgd_step",
           "RatioTrainer", "TrainConfig", "create_model", "evaluate", "load_run", "__version__"]


def __getattr__(name: str):
    """rf.evaluate and rf.load_run, imported on first use: the evaluation stack loads the data
    package, which `import ratio_fast` leaves alone (tests/test_choices.py)."""
    if name == "evaluate":
        from .evaluation.evaluate import evaluate
        return evaluate
    if name == "load_run":
        from .evaluation.load import load_run
        return load_run
    raise AttributeError(f"module 'ratio_fast' has no attribute {name!r}")
