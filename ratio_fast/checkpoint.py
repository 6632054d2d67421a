"""Checkpoints: plain dicts of tensors and numbers, written atomically, loadable with weights_only=True."""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import UserError

FORMAT = "ratio-fast-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write payload to path so that a crash at any moment leaves either the old or the new file.

    The bytes go to a temporary file in the same directory, are flushed to disk, and then
    replace the target in one rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, arch: str | None = None, map_location="cpu") -> dict:
    """Load a ratio-fast checkpoint; UserError for a missing or corrupt file or another architecture."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"checkpoint {path}: not a readable checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path}: not a ratio-fast checkpoint")
    saved_arch = state["config"]["arch"]
    if arch is not None and saved_arch != arch:
        raise UserError(f"checkpoint {path} holds a '{saved_arch}' model, not --arch {arch}")
    return state
