"""Data: image sources, the batch plan and augmentation, and three loaders behind one ``BatchSpec``.

- ``sources.py``: ``--dataset`` / ``--out-data`` / ``--out-exclude`` to image sets (``cifar.py``:
  the CIFAR pickles and download; ``synthetic.py``: the built-in set).
- ``plan.py``: what each batch holds, a pure function of (seed, epoch, index); the AutoAugment policy.
- ``augment.py``: the augmentations as batched torch operations (matching PIL bit for bit).
- ``loaders.py``: ``make_loader(kind, images, labels, BatchSpec(...), device)`` for ``gpu``,
  ``torch`` and ``auto``; ``dali.py``: the DALI pipeline.

Images are uint8 (32, 32, 3) HWC in the sources; loaders give float batches in [0, 1], NCHW, on
the training device, sharded over ranks.
"""

from ratio_fast.data.augment import AUGMENTATIONS
from ratio_fast.data.loaders import LOADER_CHOICES, BatchSpec, Loader, choose_loader_kind, make_loader
from ratio_fast.data.sources import load_in_distribution, load_out_distribution
from ratio_fast.data.synthetic import make_synthetic, make_synthetic_out

__all__ = [
    "AUGMENTATIONS",
    "BatchSpec",
    "LOADER_CHOICES",
    "Loader",
    "choose_loader_kind",
    "load_in_distribution",
    "load_out_distribution",
    "make_loader",
    "make_synthetic",
    "make_synthetic_out",
]
