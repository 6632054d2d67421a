"""The 80 Million Tiny Images file ``tiny_images.bin``, memory-mapped and read by row.

Layout (as the Outlier Exposure code reads it): no header, one row of 3072 uint8 per image;
each row is the image in Fortran order, i.e. ``row.reshape(32, 32, 3, order="F")`` gives
(row, column, channel): the red plane first, each plane stored column by column. The
published file has 79,302,017 rows (about 244 GB), so it is never read whole: each batch
reads its rows through the memory map.

The data set was withdrawn in 2020; people who still hold it usually train with the CIFAR
overlap removed (see ``read_exclusion_list`` in ``image_source.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ratio_fast.data.image_source import IMAGE_BYTES, ImageSource
from ratio_fast.errors import UserError

PUBLISHED_NAME = "tiny_images.bin"
PUBLISHED_ROWS = 79_302_017


class TinyImages(ImageSource):
    """Rows of a Tiny-Images-layout ``.bin`` file as HWC uint8 images; pickles as its path."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self.rows = _row_count(self.path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.rows, IMAGE_BYTES))
        except (OSError, ValueError) as e:
            raise UserError(f"{self.path}: cannot memory-map the file ({e})") from e

    def __len__(self) -> int:
        return self.rows

    def read(self, rows: np.ndarray) -> np.ndarray:
        flat = np.asarray(self._map[np.asarray(rows, dtype=np.int64)])  # (k, 3072), only these rows
        # Fortran order: element (i, j, c) at i + 32*j + 1024*c, i.e. C-order (c, j, i).
        return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 3, 2, 1))

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def _row_count(path: Path) -> int:
    """Rows in the file, after checking it exists and holds whole rows."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (expected a Tiny Images .bin, rows of {IMAGE_BYTES} bytes)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e
    if not path.is_file():
        raise UserError(f"{path}: not a regular file (expected a Tiny Images .bin)")
    if size == 0 or size % IMAGE_BYTES:
        raise UserError(f"{path}: {size} bytes is not a positive multiple of {IMAGE_BYTES} (one 32x32x3 "
                        f"image per row): truncated, or not in the Tiny Images layout")
    rows = size // IMAGE_BYTES
    # A download cut at a row boundary passes the check above; the published name tells us more.
    if path.name == PUBLISHED_NAME and rows != PUBLISHED_ROWS:
        raise UserError(f"{path}: {rows} rows, but the published {PUBLISHED_NAME} has {PUBLISHED_ROWS:,}: "
                        f"truncated download? (rename the file if it is a deliberate subset)")
    return rows
