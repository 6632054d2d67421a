"""The out-distribution test sets of `ratio-fast eval`, and which of them it uses by default.

Built in, no download, uint8 (N, 32, 32, 3) like the data package's sources, fixed by a seed
(the families of Hein et al., CVPR 2019, and Meinke & Hein, ICLR 2020):
- uniform-noise: every pixel uniform in [0, 1] (the authors' "uniform noise" set);
- smooth-noise: uniform noise blurred by a Gaussian of width U[1, 2.5] pixels, then stretched
  per image to [0, 1]: low-frequency noise, closer to natural images than uniform noise;
- permuted-pixels: in-distribution test images with their pixel positions shuffled: the colour
  statistics of the data without its structure.
From files: cifar10 / cifar100 (their test splits), synthetic, a .npy array (N, 32, 32, 3)
uint8, a directory of PNG/JPEG images (e.g. LSUN classroom), and SVHN's published
test_32x32.mat (a path, or `svhn` for <data-dir>/test_32x32.mat; read with scipy, which the
`eval` extra installs).

The defaults leave out the set the run trained on as out-distribution: a held-out sample of the
very distribution the model learned to reject gives an optimistic AUROC that no other paper's
numbers are comparable to. Asking for it anyway works, with a warning.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..choices import MODES
from ..datasets import CIFAR_NAMES, IMAGE_SHAPE, get_dataset, names_a_path
from ..errors import UserError

BUILT_IN = ("uniform-noise", "smooth-noise", "permuted-pixels")
BUILT_IN_SIZE = 10_000  # images of a generated set when --ood-samples is 0 (all): a test split's size
SVHN_FILE = "test_32x32.mat"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"
SMOOTH_SIGMA = (1.0, 2.5)  # pixels
_STREAMS = {name: k for k, name in enumerate(BUILT_IN)}  # one random stream per set


def uniform_noise(n: int, seed: int = 0) -> np.ndarray:
    """n images of i.i.d. uniform pixels."""
    rng = np.random.default_rng([_STREAMS["uniform-noise"], seed])
    return _to_uint8(rng.random((n, *IMAGE_SHAPE)))


def smooth_noise(n: int, seed: int = 0) -> np.ndarray:
    """n images of uniform noise, each blurred with its own Gaussian width and stretched to [0, 1]."""
    rng = np.random.default_rng([_STREAMS["smooth-noise"], seed])
    noise = rng.random((n, *IMAGE_SHAPE))
    sigmas = rng.uniform(*SMOOTH_SIGMA, size=n)
    out = np.empty_like(noise)
    for i in range(n):
        blurred = _gaussian_blur(noise[i], sigmas[i])
        low, high = blurred.min(), blurred.max()
        out[i] = (blurred - low) / max(high - low, 1e-12)
    return _to_uint8(out)


def permuted_pixels(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The first n of `images` (uint8 NHWC), each with its pixel positions shuffled (colour triples kept)."""
    rng = np.random.default_rng([_STREAMS["permuted-pixels"], seed])
    first = np.asarray(images[:n])
    pixels = first.reshape(len(first), -1, first.shape[-1])
    order = np.argsort(rng.random(pixels.shape[:2]), axis=1)  # an independent permutation per image
    return np.take_along_axis(pixels, order[:, :, None], axis=1).reshape(first.shape)


def read_svhn_mat(path: str | os.PathLike) -> np.ndarray:
    """The images of an SVHN .mat file (X: 32 x 32 x 3 x N uint8) as uint8 (N, 32, 32, 3)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--ood {path}: no such file (SVHN's test set is {SVHN_URL})")
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError(f"--ood {path}: reading SVHN .mat files needs scipy: pip install \"ratio-fast[eval]\"") from None
    try:
        images = loadmat(str(path), variable_names=["X"]).get("X")
    except Exception as e:  # noqa: BLE001  scipy raises several types for a damaged file
        raise UserError(f"--ood {path}: not a readable .mat file ({e})") from None
    if images is None or images.ndim != 4 or images.shape[:3] != IMAGE_SHAPE or images.dtype != np.uint8:
        shape = None if images is None else (images.shape, images.dtype)
        raise UserError(f"--ood {path}: expected SVHN's X, uint8 (32, 32, 3, N), got {shape}")
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2))


def training_out_distribution(config) -> str | None:
    """The --out-data the run trained on (its default if none was given), or None if it trained without one."""
    if not MODES[config.mode].uses_out_data:
        return None
    return config.out_distribution


def is_training_set(spec: str, trained_on: str | None) -> bool:
    """Whether --ood `spec` is the training out-distribution (a CIFAR name covers both of its splits)."""
    if trained_on is None:
        return False
    if spec == trained_on:
        return True
    return names_a_path(spec) and names_a_path(trained_on) and Path(spec).expanduser().resolve() == \
        Path(trained_on).expanduser().resolve()


def choose_ood_sets(requested: list[str] | None, dataset: str, trained_on: str | None) -> tuple[list[str], list[str]]:
    """(the --ood sets to evaluate, lines to tell the user). requested None: the defaults for `dataset`."""
    if requested is None:
        other = list(get_dataset(dataset).ood_sets)
        chosen = [spec for spec in other + list(BUILT_IN) if not is_training_set(spec, trained_on)]
        left_out = [spec for spec in other if is_training_set(spec, trained_on)]
        notes = [f"note: OOD sets leave out {spec}, the training out-distribution of this run" for spec in left_out]
        return chosen, notes
    warnings = [f"warning: --ood {spec} is the training out-distribution of this run (--out-data {trained_on}); "
                f"its AUROC is optimistic and not comparable to other models'"
                for spec in requested if is_training_set(spec, trained_on)]
    return requested, warnings


def load_ood_set(spec: str, *, dataset: str, test_images: np.ndarray, data_dir, samples: int, seed: int,
                 skip_bad_images: bool = False):
    """uint8 (N, 32, 32, 3) images (an array or a data-package ImageSource) of one --ood set.

    samples: how many generated images the built-in sets make (0: BUILT_IN_SIZE); file sets
    are returned whole (the caller takes the first images it needs). seed: the run's; generated
    sets use another seed than anything the training drew. skip_bad_images: leave out a folder's
    undecodable images (with a note) instead of refusing the folder.
    """
    from ..data import load_in_distribution, load_out_distribution

    n = samples or BUILT_IN_SIZE
    if spec == "uniform-noise":
        return uniform_noise(n, seed + 1)
    if spec == "smooth-noise":
        return smooth_noise(n, seed + 1)
    if spec == "permuted-pixels":
        return permuted_pixels(test_images, n, seed + 1)
    if spec in CIFAR_NAMES:  # the test split: the train split may be the training out-distribution
        if spec == dataset:
            raise UserError(f"--ood: {spec!r} is the in-distribution of this model; pick another set")
        return load_in_distribution(spec, data_dir, train=False).images
    if spec == "svhn":
        return read_svhn_mat(Path(data_dir).expanduser() / SVHN_FILE)
    if spec.lower().endswith(".mat"):
        return read_svhn_mat(spec)
    try:
        return load_out_distribution(spec, data_dir, in_name=dataset, seed=seed + 1, flag="--ood",
                                     skip_bad_images=skip_bad_images)
    except UserError as e:
        raise UserError(f"{e}; built-in sets: {', '.join(BUILT_IN)}; also svhn or a .mat file") from None


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, C) float image blurred by a Gaussian of width sigma, edges mirrored (separable)."""
    radius = int(3 * sigma + 0.5)  # 3 sigma, rounded as scipy.ndimage does
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(image.ndim)]
        padded = np.pad(image, pad, mode="symmetric")
        size = image.shape[axis]
        image = sum(w * np.take(padded, np.arange(i, i + size), axis=axis) for i, w in enumerate(taps))
    return image


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)
