"""Image sources: sets of uint8 (32, 32, 3) RGB images that loaders read by row index.

A source is what a loader needs from a data set and no more: ``len(source)`` and
``source.read(rows) -> uint8 (k, 32, 32, 3)``. Arrays (in memory or memory-mapped) become an
``ArraySource``; Tiny Images (``tiny_images.py``) and image folders (``folder.py``) read only
the rows asked for, so a 240 GB file is never read whole. ``ExcludedRows`` hides rows listed
in an exclusion file (the published Tiny Images / CIFAR overlap list).

Sources are picklable without their pixels where the pixels live in a file (they reopen it),
so DALI and DataLoader worker processes can receive them cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ratio_fast.errors import UserError

IMAGE_SHAPE = (32, 32, 3)
IMAGE_BYTES = 32 * 32 * 3


class ImageSource:
    """Base class: ``len`` images, ``read(rows)`` returns them as uint8 (k, 32, 32, 3)."""

    # True when reading means decoding files (an image folder): a loader that holds the whole
    # set on the device would decode everything up front, so "auto" prefers a streaming loader.
    decodes = False

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images at ``rows`` (int64, any order, repeats allowed) as uint8 (k, 32, 32, 3)."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *IMAGE_SHAPE)

    @property
    def nbytes(self) -> int:
        """Size of the whole set as decoded uint8 pixels."""
        return len(self) * IMAGE_BYTES


class ArraySource(ImageSource):
    """Images held in a uint8 (N, 32, 32, 3) numpy array or memmap."""

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim != 4 or tuple(array.shape[1:]) != IMAGE_SHAPE or array.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, 32, 32, 3), got {array.dtype} {tuple(array.shape)}")
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def read(self, rows: np.ndarray) -> np.ndarray:
        # Fancy indexing copies only these rows, also from a memmap.
        return np.asarray(self.array[np.asarray(rows, dtype=np.int64)])


class ExcludedRows(ImageSource):
    """``source`` without the rows in ``excluded`` (0-based); the others keep their order."""

    def __init__(self, source: ImageSource, excluded: np.ndarray) -> None:
        self.source = source
        self.excluded = np.unique(np.asarray(excluded, dtype=np.int64))
        if len(self.excluded) and (self.excluded[0] < 0 or self.excluded[-1] >= len(source)):
            raise ValueError(f"excluded rows must lie in [0, {len(source)})")
        # kept_before[j] = how many kept rows come before excluded[j]; kept row p then sits at
        # source row p + (number of j with kept_before[j] <= p). O(log E) per row, O(E) memory.
        self._kept_before = self.excluded - np.arange(len(self.excluded))

    def __len__(self) -> int:
        return len(self.source) - len(self.excluded)

    def source_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows of the underlying source for rows of this view."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows + np.searchsorted(self._kept_before, rows, side="right")

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.source.read(self.source_rows(rows))

    @property
    def decodes(self) -> bool:  # type: ignore[override]
        return self.source.decodes


def as_source(images: np.ndarray | ImageSource) -> ImageSource:
    """Wrap an array as a source; sources pass through."""
    if isinstance(images, ImageSource):
        return images
    return ArraySource(images if isinstance(images, np.ndarray) else np.asarray(images))


def read_exclusion_list(path: str | os.PathLike, num_rows: int) -> np.ndarray:
    """Read an exclusion list: one 1-based row number per line; returns sorted 0-based rows.

    1-based because the published Tiny Images / CIFAR overlap list (``80mn_cifar_idxs.txt``
    from the Outlier Exposure repository) is, and its users subtract 1: that file is passed as
    it is. Blank lines are ignored; anything else that is not a number in [1, num_rows] is a
    ``UserError`` naming the file and line.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_bytes().decode("ascii")
    except FileNotFoundError:
        raise UserError(f"--out-exclude {path}: no such file") from None
    except OSError as e:
        raise UserError(f"--out-exclude {path}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise UserError(f"--out-exclude {path}: not a text file of row numbers "
                        f"(byte {e.start} is not ASCII)") from e
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if not line.isdigit():
            raise UserError(f"--out-exclude {path}, line {number}: {line[:40]!r} is not a row number "
                            f"(expected one 1-based integer per line)")
        row = int(line)
        if not 1 <= row <= num_rows:
            raise UserError(f"--out-exclude {path}, line {number}: row {row} is outside 1..{num_rows} "
                            f"(rows are 1-based, as in the published 80mn_cifar_idxs.txt)")
        rows.append(row - 1)
    return np.unique(np.asarray(rows, dtype=np.int64))
