"""Checkpoints: plain dicts of tensors and numbers, written atomically with their SHA-256 (digest.py),
checked when loaded, loadable with torch.load(..., weights_only=True)."""
from __future__ import annotations

from pathlib import Path

from ..digest import DamagedFile, load_torch
from ..errors import UserError
from ..files import atomic_save

FORMAT = "ratio-fast-checkpoint-v1"
# The checkpoints of a run directory.
CHECKPOINT = "checkpoint.pt"  # the last one: what --resume continues
BEST = "best.pt"  # the EMA weights of the best clean test accuracy so far (the authors' "best_avg"): what eval takes


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write a training checkpoint (payload plus the format tag) atomically (files.atomic_save).

    A failed write (disk full, read-only, permission) raises a one-line UserError and keeps the
    previous checkpoint as it was.
    """
    atomic_save(path, {"format": FORMAT, **payload},
                advice="the previous checkpoint is kept; fix that, then continue with --resume")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a ratio-fast checkpoint after checking its SHA-256 (digest.py); UserError for a missing,
    damaged, corrupt or incomplete file. (Whether it fits the run's settings, the architecture
    included, is `config.resume_differences`' job.)"""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory; pass the checkpoint file in it "
                        f"(e.g. {path / CHECKPOINT})")
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        # Memory-mapped: after the check, reading only the config (as `train --resume` does first) costs no tensor I/O.
        state = load_torch(path, map_location=map_location)
    except DamagedFile as damaged:
        raise UserError(f"checkpoint {damaged}; {_other_checkpoint(path)}") from None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  a damaged file can fail in any layer of torch.load
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"checkpoint {path}: not a readable checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path}: not a ratio-fast checkpoint")
    config, trainer = state.get("config"), state.get("trainer")
    if not isinstance(config, dict) or not isinstance(config.get("arch"), str) or not isinstance(trainer, dict):
        raise UserError(f"checkpoint {path}: incomplete ratio-fast checkpoint (no config or trainer state)")
    return state


def _other_checkpoint(damaged: Path) -> str:
    """Where a run with a damaged checkpoint can go on from: its other checkpoint, if that one is intact."""
    for other, what in ((BEST, "the previous checkpoint is"), (CHECKPOINT, "the run's last checkpoint is")):
        other = damaged.with_name(other)
        if other.name == damaged.name or not other.is_file():
            continue
        try:
            state = load_torch(other)
            return f"{what} {other} (step {state['trainer']['steps_done']}), intact"
        except Exception:  # noqa: BLE001  damaged too, or not a checkpoint: not a way out
            continue
    return "no other intact checkpoint of this run is beside it"
