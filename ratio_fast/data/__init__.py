"""Data: image sources, the batch plan and augmentation, and three loader kinds behind one ``BatchSpec``.

- ``sources.py``: ``--dataset`` / ``--out-data`` / ``--out-exclude`` to image sets (``cifar.py``:
  the CIFAR pickles and download; ``synthetic.py``: the built-in set).
- ``plan.py``: what each batch holds, a pure function of (seed, epoch, index).
- ``augment.py``: an ``--augment`` row (``choices.AUGMENTATIONS``) as batched torch operations:
  crop, flip, Cutout, the model-input format; ``autoaugment.py``: AutoAugment's policy and its
  operations, bit for bit as PIL (``autoaugment_geometry.py``: where its warps sample).
- ``batches.py``: ``BatchSpec`` and the contract of every loader kind (``choices.LOADERS``):
  ``resident.py`` (gpu), ``streaming.py`` (torch, and the stream DALI runs on), ``dali.py``.
- ``loaders.py``: ``make_loader(choice, images, labels, BatchSpec(...), device)``, the kinds'
  builder table and ``auto``'s measured choice.

Images are uint8 (32, 32, 3) HWC in the sources; loaders give float batches in [0, 1], NCHW, on
the training device, sharded over ranks.
"""

from ratio_fast.data.batches import BatchSpec, Loader
from ratio_fast.data.loaders import choose_loader_kind, make_loader
from ratio_fast.data.sources import load_in_distribution, load_out_distribution
from ratio_fast.data.synthetic import make_synthetic, make_synthetic_out

__all__ = [
    "BatchSpec",
    "Loader",
    "choose_loader_kind",
    "load_in_distribution",
    "load_out_distribution",
    "make_loader",
    "make_synthetic",
    "make_synthetic_out",
]
