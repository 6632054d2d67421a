"""Out-distribution images stored as one ``.npy`` array (N, 32, 32, 3) uint8.

The usual file is the "300K random images" set (300000 x 32 x 32 x 3, about 0.9 GB). It is
memory-mapped, so opening it costs nothing and only the pages actually read are loaded.
The header is checked before mapping so a wrong file gives a one-line ``UserError``
naming it instead of a numpy traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ratio_fast.data.image_source import ArraySource
from ratio_fast.errors import UserError

EXPECTED_SHAPE = "(N, 32, 32, 3)"


def load_npy_images(path: str | os.PathLike) -> np.ndarray:
    """Open ``path`` as a read-only memmap of uint8 images (N, 32, 32, 3), checked."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a .npy array {EXPECTED_SHAPE} uint8)")

    shape, dtype, data_offset = _read_header(path)
    if len(shape) != 4 or tuple(shape[1:]) != (32, 32, 3):
        raise UserError(f"{path}: expected an array of shape {EXPECTED_SHAPE}, got {shape}")
    if dtype != np.uint8:
        raise UserError(f"{path}: expected dtype uint8 (pixel values 0..255), got {dtype}")
    if shape[0] == 0:
        raise UserError(f"{path}: the array holds no images (shape {shape})")
    needed = data_offset + int(np.prod(shape))
    size = path.stat().st_size
    if size < needed:
        raise UserError(f"{path}: truncated: the header promises {shape} ({needed} bytes) "
                        f"but the file has {size} bytes")

    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot memory-map the array ({e})") from e


class NpyImages(ArraySource):
    """A checked ``.npy`` file as an image source; pickles as its path (workers re-map it)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        super().__init__(load_npy_images(self.path))

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Return (shape, dtype, byte offset of the data) from the .npy header."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                # numpy writes 3.0 only for structured dtypes with utf-8 field names: never uint8.
                raise ValueError(f"format version {version} holds a structured dtype, not uint8")
            return tuple(int(s) for s in shape), dtype, f.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise UserError(f"{path}: not a valid .npy file ({e})") from e
