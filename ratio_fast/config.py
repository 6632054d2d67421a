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

MODES = ("ratio", "at", "plain")
LOADERS = ("auto", "dali", "gpu", "torch")
ATTACKS = ("pgd", "apgd")
BACKENDS = ("auto", "triton", "native", "torch")  # fused ops: Triton, kernels/ (C++/CUDA), plain torch  # RATIO; plain L2 adversarial training; plain (clean) training
AMP_DTYPES = ("bf16", "fp16")
# How the in- and out-distribution attacks share the GPU: one after the other, concurrently on
# two CUDA streams, or as one concatenated batch; auto: whichever measures faster (CUDA only).
ATTACK_SCHEDULES = ("auto", "sequential", "streams", "concat")


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
    max_steps: int | None = None  # stop after this many optimizer steps in total
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
    input_grad_only: bool = True  # attacks compute no weight gradients
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

    def validate(self) -> "TrainConfig":
        """Raise UserError naming the flag for any value that cannot work."""
        def flag(name):
            return "--" + name.replace("_", "-")

        check_model_name(self.arch)
        for name in ("eps_in", "eps_out", "lam", "weight_decay", "momentum", "attack_momentum",
                     "steps_in", "steps_out", "eval_samples"):
            if getattr(self, name) < 0:
                raise UserError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "step_size_in", "step_size_out"):
            if not getattr(self, name) > 0:
                raise UserError(f"{flag(name)} must be > 0, got {getattr(self, name)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise UserError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if self.max_skipped_steps < 1:
            raise UserError(f"--max-skipped-steps must be >= 1, got {self.max_skipped_steps}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.synthetic_size is not None and self.synthetic_size < self.batch_size:
            raise UserError(f"--synthetic-size must be at least --batch-size ({self.batch_size}), got {self.synthetic_size}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
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
