"""From a training checkpoint to a model, and to weight files others can load.

`model_from_checkpoint` rebuilds the trained network (EMA weights by default) for evaluation
and counterfactuals. `export_checkpoint` writes what RobustBench and plain-PyTorch users take:
`model.pt`, a plain state_dict (no `module.` / `_orig_mod.` prefixes, the `mu`/`sigma`
normalization buffers included; our WideResNet's names are RobustBench's, key for key, so it
loads into `Augustin2020AdversarialWideNet` with strict=True), and `model.safetensors`, the
same tensors with the architecture, the run's settings (`ratio-fast eval` takes the pair,
evaluation/load.py) and the threat model it was trained in (RobustBench's name of the norm,
`threat_model`: L2 or Linf, and the radius, `eps`) in the metadata. Both carry a SHA-256 of their bytes, the
formats unchanged (digest.py), and get the file mode a plain open() gives (0666 less the umask).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..training.checkpoint import load_checkpoint
from ..choices import NORMS, WEIGHTS, check_builders
from ..config import ExportConfig, TrainConfig
from ..datasets import get_dataset
from ..errors import UserError
from ..files import atomic_save, atomic_write_safetensors, make_directory
from ..models import create_model

# Prefixes wrappers add to parameter names: DistributedDataParallel / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# The pair `export` writes: the plain state_dict, and the same tensors with what rebuilds the model.
EXPORT_PT, EXPORT_SAFETENSORS = "model.pt", "model.safetensors"


def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict with wrapper prefixes removed (at any depth of wrapping), as contiguous CPU tensors."""
    cleaned = {}
    for key, value in state_dict.items():
        name = key
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        name = name.replace("._orig_mod.", ".")  # a compiled submodule
        if name in cleaned:
            raise ValueError(f"two parameters become {name!r} once wrapper prefixes are removed")
        cleaned[name] = value.detach().cpu().contiguous()
    return cleaned


# --weights (choices.WEIGHTS): where each lies in a checkpoint's trainer state (RatioTrainer.state_dict).
WEIGHTS_IN_STATE = {"ema": lambda trainer: trainer.get("ema", {}).get("model"), "model": lambda trainer: trainer.get("model")}
check_builders(WEIGHTS_IN_STATE, WEIGHTS, __name__)


def checkpoint_weights(state: dict, weights: str, path) -> dict[str, torch.Tensor]:
    """The 'ema' or 'model' state_dict of a loaded checkpoint, prefixes removed."""
    if weights not in WEIGHTS:
        raise UserError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    found = WEIGHTS_IN_STATE[weights](state.get("trainer", {}))
    if not isinstance(found, dict):
        raise UserError(f"checkpoint {path}: holds no '{weights}' weights")
    return clean_state_dict(found)


def model_from_checkpoint(path: str | Path, weights: str = ExportConfig.weights) -> tuple[torch.nn.Module, TrainConfig]:
    """The trained model (on the CPU, in eval mode) and the run's config; UserError if they do not fit."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    data_set = get_dataset(config.dataset)
    model = create_model(config.arch, num_classes=data_set.num_classes, mean=data_set.mean, std=data_set.std)
    tensors = checkpoint_weights(state, weights, path)
    problem = _mismatch(model.state_dict(), tensors)
    if problem:
        raise UserError(f"checkpoint {path}: its '{weights}' weights do not fit a {config.arch} model "
                        f"for {config.dataset} ({problem})")
    model.load_state_dict(tensors, strict=True)
    return model.eval(), config


def _mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """A short description of how `given` differs from `expected` in names and shapes; '' if it fits."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    resized = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if resized:
        k = resized[0]
        parts.append(f"{len(resized)} of another shape, e.g. {k} {tuple(given[k].shape)} "
                     f"instead of {tuple(expected[k].shape)}")
    return "; ".join(parts)


def threat_model(config: TrainConfig) -> dict[str, str]:
    """The threat model a run was trained in, as a RobustBench entry names it: its norm and radius."""
    return {"threat_model": NORMS[config.norm].autoattack, "eps": repr(config.eps_in)}


def export_checkpoint(path: str | Path, out_dir: str | Path, weights: str = ExportConfig.weights) -> tuple[Path, Path]:
    """Write out_dir/model.pt (plain state_dict) and out_dir/model.safetensors, each with its SHA-256
    (digest.py: `digest.verify(file)` checks one); returns both paths."""
    model, config = model_from_checkpoint(path, weights)  # checks the weights fit the architecture
    tensors = clean_state_dict(model.state_dict())
    out_dir = Path(out_dir)
    make_directory(out_dir)
    pt_path, st_path = out_dir / EXPORT_PT, out_dir / EXPORT_SAFETENSORS
    atomic_save(pt_path, tensors)
    metadata = {"format": "pt", "arch": config.arch, "dataset": config.dataset, "weights": weights,
                "num_classes": str(get_dataset(config.dataset).num_classes), "input": "NCHW RGB in [0,1]",
                "config": json.dumps(config.to_dict()),  # the run's settings: `ratio-fast eval` of the export
                **threat_model(config)}
    atomic_write_safetensors(st_path, tensors, metadata)
    return pt_path, st_path
