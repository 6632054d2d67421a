"""Checkpoints: plain dicts of tensors and numbers, written atomically, loadable with weights_only=True."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .errors import UserError

FORMAT = "ratio-fast-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write a training checkpoint (payload plus the format tag) with `atomic_save`."""
    atomic_save(path, {"format": FORMAT, **payload})


def atomic_save(path: str | Path, obj) -> None:
    """torch.save obj to path so that a crash at any moment leaves either the old or the new file.

    The bytes go to a temporary file in the same directory, are flushed to disk, and then
    replace the target in one rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
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
    except Exception as e:  # noqa: BLE001  a damaged file can fail in any layer of torch.load
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"checkpoint {path}: not a readable checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path}: not a ratio-fast checkpoint")
    config, trainer = state.get("config"), state.get("trainer")
    if not isinstance(config, dict) or not isinstance(config.get("arch"), str) or not isinstance(trainer, dict):
        raise UserError(f"checkpoint {path}: incomplete ratio-fast checkpoint (no config or trainer state)")
    saved_arch = config["arch"]
    if arch is not None and saved_arch != arch:
        raise UserError(f"checkpoint {path} holds a '{saved_arch}' model, not --arch {arch}")
    return state


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files left by a process killed mid-write (kill -9 skips every cleanup)."""
    for stale in path.parent.glob(path.name + ".*.tmp"):
        stale.unlink(missing_ok=True)
