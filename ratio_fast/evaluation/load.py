"""From files to a model: a training run (its directory or a checkpoint) or an export.

`load_run` is the Python side of a run directory: the model with the chosen weights, its
settings and its metrics. `load_model` is what the commands that take a trained model (eval,
counterfactuals) load: a ratio-fast checkpoint, a run directory, or the pair `export` writes
(model.pt and model.safetensors, whose metadata names the architecture and the run's settings).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ExportConfig, TrainConfig
from ..datasets import get_dataset
from ..digest import DamagedFile, verify
from ..errors import UserError
from ..models import create_model
from ..training.checkpoint import BEST, CHECKPOINT
from .export import EXPORT_PT, EXPORT_SAFETENSORS, _mismatch, model_from_checkpoint

METRICS = "metrics.jsonl"


@dataclass
class LoadedRun:
    """A trained run: `model` (CPU, eval mode, the chosen weights), `config` (its TrainConfig), `metrics`
    (the rows of its metrics.jsonl: "kind" "epoch", or "step" for --log-every rows), `checkpoint`."""

    model: torch.nn.Module
    config: TrainConfig
    metrics: list[dict]
    checkpoint: Path


def load_run(path: str | Path, weights: str = ExportConfig.weights) -> LoadedRun:
    """A run directory (its best.pt, else checkpoint.pt) or a checkpoint file, as a LoadedRun."""
    checkpoint = resolve_checkpoint(path)
    model, config = model_from_checkpoint(checkpoint, weights)
    metrics_file = checkpoint.parent / METRICS
    rows = []
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by a crash mid-write: not a record
                continue
    return LoadedRun(model, config, [{"kind": "epoch", **row} for row in rows], checkpoint)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given; for a run directory its best.pt (the EMA weights of the best clean
    test accuracy: what the authors evaluate), else its checkpoint.pt (the last epoch)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in (BEST, CHECKPOINT):
        if (path / name).is_file():
            return path / name
    raise UserError(f"{path}: a directory without {BEST} or {CHECKPOINT}; pass a checkpoint file")


def export_files(path: str | Path) -> Path | None:
    """The model.safetensors of an export (its directory, its model.pt or the file itself); None when
    `path` is no export (a checkpoint or a run directory)."""
    path = Path(path)
    if path.is_dir():
        has_run = (path / BEST).is_file() or (path / CHECKPOINT).is_file()
        return path / EXPORT_SAFETENSORS if not has_run and (path / EXPORT_SAFETENSORS).is_file() else None
    if path.name == EXPORT_SAFETENSORS or path.suffix == ".safetensors":
        return path
    if path.name == EXPORT_PT and (path.parent / EXPORT_SAFETENSORS).is_file():
        return path.parent / EXPORT_SAFETENSORS  # model.pt holds the same tensors; the pair's metadata is here
    return None


def model_from_export(path: str | Path) -> tuple[torch.nn.Module, TrainConfig]:
    """The exported model (CPU, eval mode) and the settings of the run it came from (its metadata; an
    export written before they were stored there gets the defaults for its architecture and data set)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"export {path}: no such file")
    try:
        verify(path)
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except DamagedFile as damaged:
        raise UserError(f"export {damaged}") from None
    except Exception as e:  # noqa: BLE001  a damaged file can fail in any layer of safetensors
        raise UserError(f"export {path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if "arch" not in metadata or "dataset" not in metadata:
        raise UserError(f"export {path}: no architecture in its metadata (not written by ratio-fast export)")
    if "config" in metadata:
        config = TrainConfig.from_dict(json.loads(metadata["config"]))
    else:
        config = TrainConfig(arch=metadata["arch"], dataset=metadata["dataset"])
    data_set = get_dataset(config.dataset)
    model = create_model(config.arch, num_classes=data_set.num_classes, mean=data_set.mean, std=data_set.std)
    problem = _mismatch(model.state_dict(), tensors)
    if problem:
        raise UserError(f"export {path}: its tensors do not fit a {config.arch} model for {config.dataset} ({problem})")
    model.load_state_dict(tensors, strict=True)
    return model.eval(), config


def load_model(path: str | Path, weights: str = ExportConfig.weights) -> tuple[torch.nn.Module, TrainConfig, Path]:
    """(model on the CPU in eval mode, the run's settings, the file read) for a checkpoint, a run
    directory or an export."""
    exported = export_files(path)
    if exported is not None:
        return (*model_from_export(exported), exported)
    checkpoint = resolve_checkpoint(path)
    return (*model_from_checkpoint(checkpoint, weights), checkpoint)
