"""A directory of PNG/JPEG images as an out-distribution source, decoded on demand.

Files are found recursively (``.png``, ``.jpg``, ``.jpeg``, any case) and ordered by their
path relative to the directory, so row numbers (and exclusion lists) are stable. Each image
is decoded with pillow, converted to RGB, resized so that its shorter side is 32 pixels
(pillow's antialiased bilinear filter) and centre-cropped to 32x32. Loaders decode in their
worker processes (DALI's parallel external source, DataLoader workers), only the images of
each batch; an unreadable file is a ``UserError`` naming it, when its batch is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ratio_fast.data.image_source import IMAGE_SHAPE, ImageSource
from ratio_fast.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIZE = IMAGE_SHAPE[0]


class ImageFolder(ImageSource):
    """The images under ``root``, in sorted relative-path order."""

    decodes = True

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"{self.root}: no such directory")
        self.files = sorted((p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                            key=lambda p: p.relative_to(self.root).as_posix())
        if not self.files:
            raise UserError(f"{self.root}: holds no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images")

    def __len__(self) -> int:
        return len(self.files)

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *IMAGE_SHAPE), dtype=np.uint8)
        for k, row in enumerate(rows):
            out[k] = decode_image(self.files[row])
        return out


def decode_image(path: Path) -> np.ndarray:
    """One image file as uint8 (32, 32, 3): RGB, shorter side resized to 32, centre crop."""
    from PIL import Image  # imported here: only folders need pillow

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            scale = SIZE / min(w, h)
            if (w, h) != (SIZE, SIZE):
                w, h = max(SIZE, round(w * scale)), max(SIZE, round(h * scale))
                image = image.resize((w, h), Image.Resampling.BILINEAR)
            left, top = (w - SIZE) // 2, (h - SIZE) // 2
            pixels = np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)
    except Exception as e:  # pillow raises many types for damaged files (OSError, SyntaxError, ...)
        raise UserError(f"{path}: cannot decode as an image ({type(e).__name__}: {e})".replace("\n", " ")) from e
    return pixels
