"""Data: sources (CIFAR pickles, .npy arrays, Tiny Images, image folders, a synthetic set) and
the three loaders (gpu-resident, DALI, torch DataLoader) that share one batch plan.

Sources give uint8 (32, 32, 3) HWC images (arrays, or ``ImageSource`` objects read by row);
loaders turn them into float batches in [0,1], NCHW, on the training device, sharded over
ranks. ``make_loader(kind, ...)`` picks one; see ``loaders.py`` for how ``auto`` chooses.
"""

from ratio_fast.data.cifar import CIFAR100_MD5, CIFAR100_URL, CIFAR10_MD5, CIFAR10_URL, load_cifar
from ratio_fast.data.dali_loader import DaliLoader, dali_available
from ratio_fast.data.device_loader import DEVICE_RESIDENT_MAX_BYTES, DeviceLoader
from ratio_fast.data.folder import ImageFolder
from ratio_fast.data.image_source import ArraySource, ExcludedRows, ImageSource, as_source, read_exclusion_list
from ratio_fast.data.loader import Loader
from ratio_fast.data.loaders import (
    LOADER_CHOICES,
    LOADER_KINDS,
    LoaderChoice,
    choose_loader_kind,
    make_loader,
    resolve_loader_kind,
)
from ratio_fast.data.npy import NpyImages, load_npy_images
from ratio_fast.data.plan import BatchPlan, plan_batch
from ratio_fast.data.sources import (
    IN_DISTRIBUTIONS,
    OUT_DISTRIBUTIONS,
    InDistribution,
    load_in_distribution,
    load_out_distribution,
)
from ratio_fast.data.synthetic import make_synthetic, make_synthetic_out
from ratio_fast.data.tiny_images import TinyImages
from ratio_fast.data.torch_loader import TorchLoader

__all__ = [
    "ArraySource",
    "BatchPlan",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "CIFAR100_MD5",
    "CIFAR100_URL",
    "DEVICE_RESIDENT_MAX_BYTES",
    "DaliLoader",
    "DeviceLoader",
    "ExcludedRows",
    "IN_DISTRIBUTIONS",
    "ImageFolder",
    "ImageSource",
    "InDistribution",
    "LOADER_CHOICES",
    "LOADER_KINDS",
    "Loader",
    "LoaderChoice",
    "NpyImages",
    "OUT_DISTRIBUTIONS",
    "TinyImages",
    "TorchLoader",
    "as_source",
    "choose_loader_kind",
    "dali_available",
    "load_cifar",
    "load_in_distribution",
    "load_npy_images",
    "load_out_distribution",
    "make_loader",
    "make_synthetic",
    "make_synthetic_out",
    "plan_batch",
    "read_exclusion_list",
    "resolve_loader_kind",
]
