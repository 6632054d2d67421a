"""Training configuration: one flat dataclass, saved as JSON in the run directory and the checkpoint.

Each setting is declared once, by `setting(...)`: its default, the help and --help group of its
`train` flag (cli.py generates the flags from them), and the values it may take (`validate`).

Defaults are the authors' CIFAR-10 RATIO settings (WRN-34-10, eps 0.5 in / 1.0 out, ArgminPGD
with 10 / 20 steps of 0.1, lambda 1, SGD-Nesterov 0.1 with cosine decay, EMA 0.999).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .attack_schedule import SCHEDULES
from .attacks import MOMENTUM_RANGE
from .choices import AUGMENTATIONS, LOADERS, choices_help, same_batches
from .datasets import DATASETS, get_dataset
from .errors import UserError
from .models import check_model_name
from .ops._common import BACKENDS
from .speed import AMP_DTYPES
from .validation import SEED_RANGE, check_number

# The groups of `ratio-fast train --help`, in their order there.
DATA = "data"
MODEL = "model and optimization"
ATTACKS = "attacks (L2, ArgminPGD: momentum on the L1-normalized gradient, best iterate)"
SPEED = "speed and hardware"
RUN = "run"
MULTI_GPU = "multi-GPU (launch with torchrun --nproc_per_node=N -m ratio_fast.cli train ...)"

# What a resumed run may change: how long it runs, how often it saves and evaluates, where its
# data lies, and the speed switches that keep the math. Anything else would silently train
# another run than the checkpoint's, so `--resume` refuses it.
RESUME_MAY_CHANGE = frozenset({
    "epochs", "max_steps", "checkpoint_every", "max_skipped_steps", "eval_samples", "data_dir", "device",
    "backend", "channels_last", "attack_schedule", "cuda_graphs", "compile", "input_grad_only",
    "fused_optimizer",
})
# What a resumed run may change where the change keeps the math: setting -> (saved, given config)
# -> why the change is refused, or None when it is not.
RESUME_MAY_CHANGE_IF = {
    "loader": lambda saved, given: (None if same_batches(saved.loader, given.loader, saved.augment)
                                    else f"not the same batches with --augment {saved.augment}"),
}
# Limits of one invocation, not settings of the run: a resume does not inherit them.
PER_INVOCATION = frozenset({"max_steps"})


# The help of --dataset and --out-data, from the table of data sets (datasets.py).
_DATASET_NAMES = [f"{name}{'' if data.files else ' (built in, offline)'}" for name, data in DATASETS.items()]
_DATASET_NAMES = ", ".join(_DATASET_NAMES[:-1]) + " or " + _DATASET_NAMES[-1]  # "a, b or c"
_DEFAULT_OUT_DATA = ", ".join(f"{data.out_data} for {name}" for name, data in DATASETS.items())


def flag_name(field: str) -> str:
    """The command-line flag of a TrainConfig field: eps_in -> --eps-in."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class SettingInfo:
    """What a TrainConfig field is besides its type and default: its flag's help and --help group,
    the values it may take (`choices`, or `bounds` for check_number: at_least, above, below)."""

    help: str
    group: str
    choices: tuple[str, ...] | None = None
    bounds: dict = dataclasses.field(default_factory=dict)
    metavar: str | None = None
    has_flag: bool = True  # False: set only by --config FILE or the API
    negatable: bool = True  # a bool's flag comes with --no-<flag>; False: a plain on switch


def setting(default, group: str, help: str, *, choices=None, metavar=None, has_flag=True, negatable=True,
            **bounds) -> dataclasses.Field:
    """A TrainConfig field declared once: its default and its SettingInfo (read back by `about`)."""
    info = SettingInfo(help, group, choices, bounds, metavar, has_flag, negatable)
    if isinstance(default, list):
        return dataclasses.field(default_factory=default.copy, metadata={"info": info})
    return dataclasses.field(default=default, metadata={"info": info})


def about(field: dataclasses.Field) -> SettingInfo:
    """The SettingInfo `setting` declared for a TrainConfig field."""
    return field.metadata["info"]


def value_type(field: dataclasses.Field) -> tuple[str, bool]:
    """(the field's type as written, e.g. 'int', and whether None (not set) is allowed)."""
    written = str(field.type)
    return written.removesuffix(" | None"), written.endswith(" | None")


@dataclass
class TrainConfig:
    dataset: str = setting("cifar10", DATA, "in-distribution: " + _DATASET_NAMES)
    data_dir: str = setting("data", DATA, "where the CIFAR python-pickle folders are (or get downloaded)")
    out_data: str | None = setting(  # None: the default for `dataset`
        None, DATA, "out-distribution: a .npy of (N,32,32,3) uint8 images (e.g. 300K random images), the 80M Tiny "
        f"Images tiny_images.bin, a folder of PNG/JPEG images, or {' / '.join(DATASETS)}; default: {_DEFAULT_OUT_DATA}")
    out_exclude: list[str] = setting(
        [], DATA, "a list of out-distribution rows to leave out, one number per line, 1-based (FILE or FILE:1, e.g. "
        "the published 80mn_cifar_idxs.txt) or 0-based (FILE:0, e.g. the authors' 80mn_cifar10_test_idxs.txt); "
        "repeat for several lists (configs/ratio-cifar10-wrn34.json)", metavar="FILE[:0|:1]")
    skip_bad_images: bool = setting(False, DATA, "leave out the images of an --out-data folder that cannot be "
                                    "decoded (counted in a note) instead of stopping before the first step",
                                    negatable=False)
    loader: str = setting("auto", DATA, choices_help(LOADERS), choices=tuple(LOADERS))
    synthetic_size: int | None = setting(None, DATA, "training images of the synthetic set (default: 10240)",
                                         at_least=1)
    augment: str = setting("autoaugment_cutout", DATA, "of both batches. " + choices_help(AUGMENTATIONS),
                           choices=tuple(AUGMENTATIONS))

    arch: str = setting("wrn34", MODEL, "wrn34, wrn28, resnet18, resnet50 or tiny")  # checked by check_model_name
    mode: str = setting("ratio", MODEL, "ratio: in- and out-distribution attacks; at: in-distribution only; plain: "
                        "no attacks", choices=("ratio", "at", "plain"))
    epochs: int = setting(300, MODEL, "passes over the training set (the cosine schedule's length)", at_least=1)
    max_steps: int | None = setting(None, MODEL, "stop after this many optimizer steps in total (a limit of this "
                                    "invocation: --resume does not inherit it)", at_least=1)
    batch_size: int = setting(128, MODEL, "in-distribution batch (out-distribution: the same)", at_least=1)
    bn_groups: int = setting(1, MODEL, "BatchNorm statistics over N equal slices of each process's batch, each with "
                             "its share of in- and out-distribution images, running statistics from the first: the "
                             "authors' nn.DataParallel on N GPUs (their run: 2); P processes without --sync-bn "
                             "normalize over P x N slices", metavar="N", at_least=1)
    lr: float = setting(0.1, MODEL, "peak learning rate of SGD (Nesterov), cosine to 0 per step", above=0)
    momentum: float = setting(0.9, MODEL, "SGD momentum", has_flag=False, at_least=0)
    weight_decay: float = setting(5e-4, MODEL, "SGD weight decay", at_least=0)
    ema_decay: float = setting(0.999, MODEL, "decay of the weight average used for evaluation (warm-up "
                               "(1+n)/(10+n))", at_least=0, below=1)
    seed: int = setting(0, MODEL, "data order, augmentation, initialization and attack starts (0 to 2**63-1)",
                        **SEED_RANGE)

    attack: str = setting("pgd", ATTACKS, "pgd: the authors' ArgminPGD; apgd: APGD (step-size schedule, stronger, "
                          "same cost)", choices=("pgd", "apgd"))
    eps_in: float = setting(0.5, ATTACKS, "L2 radius of the in-distribution attack", at_least=0)
    eps_out: float = setting(1.0, ATTACKS, "L2 radius of the out-distribution attack", at_least=0)
    steps_in: int = setting(10, ATTACKS, "in-distribution attack steps", at_least=0)
    steps_out: int = setting(20, ATTACKS, "out-distribution attack steps", at_least=0)
    step_size_in: float = setting(0.1, ATTACKS, "L2 length of each in-distribution attack step", above=0)
    step_size_out: float = setting(0.1, ATTACKS, "L2 length of each out-distribution attack step", above=0)
    attack_momentum: float = setting(0.9, ATTACKS, "ArgminPGD's momentum on the L1-normalized gradient (0: plain "
                                     "PGD)", **MOMENTUM_RANGE)
    lam: float = setting(1.0, ATTACKS, "weight of the out-distribution loss", at_least=0)

    # Speed switches. None means "the fast choice for the device": on for CUDA, off for CPU.
    device: str = setting("auto", SPEED, "auto, cpu, cuda or cuda:N")
    amp: bool | None = setting(None, SPEED, "mixed precision, perturbations stay fp32")
    amp_dtype: str = setting("bf16", SPEED, "autocast type under --amp (fp16 adds a gradient scaler)",
                             choices=tuple(AMP_DTYPES))
    channels_last: bool | None = setting(None, SPEED, "channels_last memory format")
    # How the in- and out-distribution attacks share the GPU: one after the other, concurrently on
    # two CUDA streams, or as one concatenated batch; auto: whichever measures faster (CUDA only).
    attack_schedule: str = setting(
        "auto", SPEED, "in- and out-distribution attacks one after the other, on two CUDA streams, or as one "
        "concatenated batch; auto: measured once per GPU and setting, then cached",
        choices=("auto", *SCHEDULES))
    cuda_graphs: bool | None = setting(None, SPEED, "replay the attacks from a CUDA graph")
    compile: bool | None = setting(None, SPEED, "torch.compile the model")
    fp32_first_conv: bool = setting(True, SPEED, "under --amp, keep the first convolution in fp32 (small "
                                    "perturbations survive)")
    input_grad_only: bool = setting(True, SPEED, "attacks freeze the weights, so a compiled backward computes no "
                                    "weight gradients (eager autograd.grad(loss, x) skips them anyway)")
    fused_optimizer: bool = setting(True, SPEED, "SGD's fused single-kernel update")
    backend: str = setting("auto", SPEED, "fused PGD step: auto (Triton on CUDA, torch on CPU), triton, native "
                           "(kernels/, C++/OpenMP or CUDA, built by pip install), or the plain-torch reference",
                           choices=BACKENDS)

    eval_samples: int = setting(1000, RUN, "test images for the per-epoch robust accuracy (0 to skip)", at_least=0)
    checkpoint_every: int | None = setting(None, RUN, "also checkpoint every STEPS optimizer steps (default: at "
                                           "the end of each epoch)", metavar="STEPS", at_least=1)
    max_skipped_steps: int = setting(20, RUN, "stop when this many steps in a row had a non-finite loss or "
                                     "gradient (they are skipped)", at_least=1)

    sync_bn: bool = setting(False, MULTI_GPU, "BatchNorm statistics over all ranks' batches", negatable=False)

    def __post_init__(self):
        self.validate()

    def validate(self) -> "TrainConfig":
        """Raise UserError naming the flag for any value that cannot work."""
        check_model_name(self.arch)
        # Each number must also be finite (check_number): a NaN radius passes every "< 0" test and
        # then never projects; an infinite weight makes every step non-finite.
        for field in dataclasses.fields(self):
            info, value, flag = about(field), getattr(self, field.name), flag_name(field.name)
            kind, may_be_unset = value_type(field)
            if kind in ("int", "float") and not (value is None and may_be_unset):
                check_number(flag, value, integer=kind == "int", **info.bounds)
            if info.choices is not None and value not in info.choices:
                raise UserError(f"{flag} must be one of {', '.join(info.choices)}, got {value!r}")
        if self.batch_size % self.bn_groups:
            raise UserError(f"--batch-size {self.batch_size} must be divisible by --bn-groups {self.bn_groups} "
                            "(each BatchNorm group holds an equal share of the batch)")
        if self.bn_groups > 1 and self.sync_bn:
            raise UserError(f"--bn-groups {self.bn_groups} and --sync-bn exclude each other: one normalizes over "
                            "slices of the batch, the other over all processes' batches together")
        if self.synthetic_size is not None and self.synthetic_size < self.batch_size:
            raise UserError(f"--synthetic-size must be at least --batch-size ({self.batch_size}), got {self.synthetic_size}")
        return self

    @property
    def out_distribution(self) -> str:
        """What a ratio run trains against: --out-data, or the data set's default (datasets.py)."""
        return self.out_data or get_dataset(self.dataset).out_data

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
    '--flag: checkpoint A, given B', a refused one with the reason RESUME_MAY_CHANGE_IF gives."""
    allowed, refused = [], []
    for field in dataclasses.fields(TrainConfig):
        before, after = getattr(saved, field.name), getattr(given, field.name)
        if before != after:
            line = f"{flag_name(field.name)}: checkpoint {_shown(before)}, given {_shown(after)}"
            why = _refusal(field.name, saved, given)
            if why is None:
                allowed.append(line)
            else:
                refused.append(f"{line} ({why})" if why else line)
    return allowed, refused


def _refusal(name: str, saved: TrainConfig, given: TrainConfig) -> str | None:
    """None when a resumed run may change setting `name` from `saved` to `given`; else why not ("": not at all)."""
    if name in RESUME_MAY_CHANGE_IF:
        return RESUME_MAY_CHANGE_IF[name](saved, given)
    return None if name in RESUME_MAY_CHANGE else ""


def _shown(value) -> str:
    return "not set" if value is None else str(value)
