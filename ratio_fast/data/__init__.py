"""Data: sources (CIFAR pickles, .npy arrays, a synthetic set) and the device-resident loader.

Sources return uint8 (N, 32, 32, 3) HWC arrays; ``DeviceLoader`` turns them into float
batches in [0,1], NCHW, on the training device.
"""

from ratio_fast.data.cifar import CIFAR100_MD5, CIFAR100_URL, CIFAR10_MD5, CIFAR10_URL, load_cifar
from ratio_fast.data.device_loader import DeviceLoader
from ratio_fast.data.npy import load_npy_images
from ratio_fast.data.sources import (
    IN_DISTRIBUTIONS,
    OUT_DISTRIBUTIONS,
    InDistribution,
    load_in_distribution,
    load_out_distribution,
)
from ratio_fast.data.synthetic import make_synthetic, make_synthetic_out

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "CIFAR100_MD5",
    "CIFAR100_URL",
    "DeviceLoader",
    "IN_DISTRIBUTIONS",
    "InDistribution",
    "OUT_DISTRIBUTIONS",
    "load_cifar",
    "load_in_distribution",
    "load_npy_images",
    "load_out_distribution",
    "make_synthetic",
    "make_synthetic_out",
]
