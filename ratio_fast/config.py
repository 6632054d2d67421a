"""Training configuration: one flat dataclass, saved as JSON in the run directory and the checkpoint.

Defaults are the authors' CIFAR-10 RATIO settings (WRN-34-10, eps 0.5 in / 1.0 out, ArgminPGD
with 10 / 20 steps of 0.1, lambda 1, SGD-Nesterov 0.1 with cosine decay, EMA 0.999).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .data.augment import AUGMENTATIONS
from .errors import UserError
from .models import check_model_name
from .validation import check_number

MODES = ("ratio", "at", "plain")  # RATIO; plain L2 adversarial training; plain (clean) training
LOADERS = ("auto", "dali", "gpu", "torch")
ATTACKS = ("pgd", "apgd")
BACKENDS = ("auto", "triton", "native", "torch")  # fused ops: Triton, kernels/ (C++/CUDA), plain torch
AMP_DTYPES = ("bf16", "fp16")
# How the in- and out-distribution attacks share the GPU: one after the other, concurrently on
# two CUDA streams, or as one concatenated batch; auto: whichever measures faster (CUDA only).
ATTACK_SCHEDULES = ("auto", "sequential", "streams", "concat")


# The numeric settings and their ranges. Each must also be finite: a NaN radius passes every
# "< 0" test and then never projects; an infinite weight makes every step non-finite.
_FLOAT_RANGES = {
    "lr": dict(above=0), "momentum": dict(at_least=0), "weight_decay": dict(at_least=0),
    "eps_in": dict(at_least=0), "eps_out": dict(at_least=0), "step_size_in": dict(above=0),
    "step_size_out": dict(above=0), "attack_momentum": dict(at_least=0), "lam": dict(at_least=0),
    "ema_decay": dict(at_least=0, below=1),
}
_INTEGER_RANGES = {
    "epochs": dict(at_least=1), "batch_size": dict(at_least=1), "steps_in": dict(at_least=0),
    "steps_out": dict(at_least=0), "eval_samples": dict(at_least=0), "max_skipped_steps": dict(at_least=1),
    "seed": {}, "max_steps": dict(at_least=1), "checkpoint_every": dict(at_least=1), "synthetic_size": dict(at_least=1),
}
_UNSET_ALLOWED = {"max_steps", "checkpoint_every", "synthetic_size"}  # None: not set

# What a resumed run may change: how long it runs, how often it saves and evaluates, where its
# data lies, and the speed switches that keep the math. Anything else would silently train
# another run than the checkpoint's, so `--resume` refuses it.
RESUME_MAY_CHANGE = frozenset({
    "epochs", "max_steps", "checkpoint_every", "max_skipped_steps", "eval_samples", "data_dir", "device",
    "loader", "backend", "channels_last", "attack_schedule", "cuda_graphs", "compile", "input_grad_only",
    "fused_optimizer",
})
# Limits of one invocation, not settings of the run: a resume does not inherit them.
PER_INVOCATION = frozenset({"max_steps"})


def flag_name(field: str) -> str:
    """The command-line flag of a TrainConfig field: eps_in -> --eps-in."""
    return "--" + field.replace("_", "-")


@dataclass
class TrainConfig:
    arch: str = "wrn34"
    dataset: str = "cifar10"
    data_dir: str = "data"
    out_data: str | None = None  # .npy path or a dataset name; None: the default for `dataset`
    # Out-distribution rows to leave out: exclusion lists FILE[:0|:1] (0- or 1-based; default 1).
    out_exclude: list[str] = dataclasses.field(default_factory=list)
    loader: str = "auto"  # auto | dali | gpu | torch
    mode: str = "ratio"
    epochs: int = 300
    max_steps: int | None = None  # stop after this many optimizer steps in total (this invocation only)
    batch_size: int = 128  # in-distribution batch; the out-distribution batch has the same size
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps_in: float = 0.5
    eps_out: float = 1.0
    steps_in: int = 10
    steps_out: int = 20
    step_size_in: float = 0.1
    step_size_out: float = 0.1
    attack_momentum: float = 0.9
    attack: str = "pgd"  # pgd: the authors' ArgminPGD; apgd: APGD (Croce & Hein 2020), the stronger option
    lam: float = 1.0
    ema_decay: float = 0.999
    # Speed switches. None means "the fast choice for the device": on for CUDA, off for CPU.
    amp: bool | None = None  # autocast to amp_dtype; perturbations stay fp32
    amp_dtype: str = "bf16"
    channels_last: bool | None = None
    attack_schedule: str = "auto"
    cuda_graphs: bool | None = None  # the attacks replayed from a CUDA graph (CUDA only)
    compile: bool | None = None  # torch.compile the model
    fp32_first_conv: bool = True  # under AMP, the first convolution stays fp32 (attack strength)
    input_grad_only: bool = True  # attacks freeze the weights: no weight gradients in a compiled backward
    fused_optimizer: bool = True  # SGD's fused kernel (one launch for the whole update)
    augment: str = "autoaugment_cutout"  # the authors' --augm; or crop_flip, none (data/augment.py)
    backend: str = "auto"  # fused-op backend: auto | triton | torch
    device: str = "auto"
    seed: int = 0
    synthetic_size: int | None = None  # training-set size of the built-in synthetic data
    eval_samples: int = 1000  # test images for the per-epoch robust accuracy (0: skip)
    checkpoint_every: int | None = None  # optimizer steps between checkpoints (None: every epoch)
    sync_bn: bool = False  # SyncBatchNorm across ranks under torchrun
    max_skipped_steps: int = 20  # stop when this many steps in a row had a non-finite loss or gradient

    def __post_init__(self):
        self.validate()

    def validate(self) -> "TrainConfig":
        """Raise UserError naming the flag for any value that cannot work."""
        check_model_name(self.arch)
        for name, bounds in _FLOAT_RANGES.items():
            check_number(flag_name(name), getattr(self, name), **bounds)
        for name, bounds in _INTEGER_RANGES.items():
            value = getattr(self, name)
            if value is not None or name not in _UNSET_ALLOWED:
                check_number(flag_name(name), value, integer=True, **bounds)
        if self.synthetic_size is not None and self.synthetic_size < self.batch_size:
            raise UserError(f"--synthetic-size must be at least --batch-size ({self.batch_size}), got {self.synthetic_size}")
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.augment not in AUGMENTATIONS:
            raise UserError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.loader not in LOADERS:
            raise UserError(f"--loader must be one of {', '.join(LOADERS)}, got {self.loader!r}")
        if self.attack not in ATTACKS:
            raise UserError(f"--attack must be one of {', '.join(ATTACKS)}, got {self.attack!r}")
        if self.amp_dtype not in AMP_DTYPES:
            raise UserError(f"--amp-dtype must be one of {', '.join(AMP_DTYPES)}, got {self.amp_dtype!r}")
        if self.attack_schedule not in ATTACK_SCHEDULES:
            raise UserError(f"--attack-schedule must be one of {', '.join(ATTACK_SCHEDULES)}, "
                            f"got {self.attack_schedule!r}")
        if self.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in upgrade_legacy_settings(values, "checkpoint settings").items() if k in known})


def upgrade_legacy_settings(values: dict, where: str) -> dict:
    """Settings saved before --augment and the repeatable --out-exclude, in today's terms: augment
    true / false -> crop_flip / none (what those runs did), out_exclude FILE / null -> [FILE] / [].
    The old zero-filled --cutout has no equivalent: a UserError names its replacement."""
    values = dict(values)
    if isinstance(values.get("augment"), bool) or "cutout" in values:
        if values.pop("cutout", False):
            raise UserError(f"{where}: cutout was replaced by --augment autoaugment_cutout (AutoAugment and a "
                            "Cutout filled with the mean colour, as the authors train); the zero-filled Cutout is gone")
        if isinstance(values.get("augment"), bool):
            values["augment"] = "crop_flip" if values["augment"] else "none"
    if "out_exclude" in values and not isinstance(values["out_exclude"], list):
        values["out_exclude"] = [] if values["out_exclude"] is None else [values["out_exclude"]]
    return values


def resume_differences(saved: TrainConfig, given: TrainConfig) -> tuple[list[str], list[str]]:
    """(allowed, refused): the settings `given` changes from the checkpoint's `saved` ones, each as
    '--flag: checkpoint A, given B'; refused are those outside RESUME_MAY_CHANGE."""
    allowed, refused = [], []
    for field in dataclasses.fields(TrainConfig):
        before, after = getattr(saved, field.name), getattr(given, field.name)
        if before != after:
            line = f"{flag_name(field.name)}: checkpoint {_shown(before)}, given {_shown(after)}"
            (allowed if field.name in RESUME_MAY_CHANGE else refused).append(line)
    return allowed, refused


def _shown(value) -> str:
    return "not set" if value is None else str(value)
