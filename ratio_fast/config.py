"""The settings of every command, each declared once by `setting(...)`: its default, the help and
--help group of its flag (cli/ generates each subcommand's flags from the declarations), and the
values it may take (`check_settings`, whenever a config is made).

TrainConfig (`ratio-fast train`) is saved as JSON in the run directory and the checkpoint. Its
defaults are the authors' CIFAR-10 RATIO settings (WRN-34-10, eps 0.5 in / 1.0 out, ArgminPGD
with 10 / 20 steps of 0.1, lambda 1, SGD-Nesterov 0.1 with cosine decay, EMA 0.999).
EvalConfig, CounterfactualsConfig and ExportConfig are the settings of the commands that take a
trained checkpoint, with the authors' evaluation as defaults (APGD at the run's radius on all
test images; counterfactuals at radii 0.5 ... 3.0 with 500 APGD steps).

This module stands on the ground floor: it imports the tables of choices.py and datasets.py,
validation and errors, nothing of the machinery.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from .choices import (AMP_TYPES, ARCHITECTURES, AUGMENTATIONS, BACKENDS, COUNTERFACTUAL_STARTS, COUNTERFACTUAL_TARGETS,
                      DEFAULT_NORM, EVAL_ATTACKS, LOADERS, MODES, NORMS, OOD_SETS, SCHEDULES, TRAINING_ATTACKS, WEIGHTS,
                      choices_help, per_norm, same_batches)
from .datasets import CIFAR_NAMES, DATASETS, get_dataset
from .errors import UserError
from .validation import MOMENTUM_RANGE, SEED_RANGE, check_number, lookup

# The groups of each subcommand's --help, in their order there. OPTIONS: the subcommand's own
# options, before any group.
OPTIONS = ""
DATA = "data"
MODEL = "model and optimization"
ATTACKS = "attacks (ArgminPGD: momentum on the L1-normalized gradient, best iterate)"
SPEED = "speed and hardware"
RUN = "run"
MULTI_GPU = "multi-GPU (launch with torchrun --nproc_per_node=N -m ratio_fast.cli train ...)"
ROBUST = "robust accuracy"
OOD = "out-of-distribution detection (max softmax confidence)"

# What a resumed run may change: how long it runs, how often it saves and evaluates, where its
# data lies, and the speed switches that keep the math. Anything else would silently train
# another run than the checkpoint's, so `--resume` refuses it.
RESUME_MAY_CHANGE = frozenset({
    "epochs", "max_steps", "checkpoint_every", "checkpoint_epochs", "keep_last", "max_skipped_steps", "eval_samples",
    "log_every", "tensorboard", "workers",
    "data_dir", "device", "backend", "channels_last", "attack_schedule", "cuda_graphs", "compile", "input_grad_only",
    "fused_optimizer",
})
# What a resumed run may change where the change keeps the math: setting -> (saved, given config)
# -> why the change is refused, or None when it is not.
RESUME_MAY_CHANGE_IF = {
    "loader": lambda saved, given: (None if same_batches(saved.loader, given.loader, saved.augment)
                                    else f"not the same batches with --augment {saved.augment}"),
}
# TrainConfig's settings that default to a fact of the --norm's row of choices.NORMS.
NORM_DEFAULTS = {"eps_in": "eps_in", "eps_out": "eps_out", "step_size_in": "step_size", "step_size_out": "step_size"}
# Limits of one invocation, not settings of the run: a resume does not inherit them.
PER_INVOCATION = frozenset({"max_steps"})


# The help of --dataset and --out-data, from the table of data sets (datasets.py).
_DATASET_NAMES = [f"{name}{'' if data.files else ' (built in, offline)'}" for name, data in DATASETS.items()]
_DATASET_NAMES = ", ".join(_DATASET_NAMES[:-1]) + " or " + _DATASET_NAMES[-1]  # "a, b or c"
_DEFAULT_OUT_DATA = ", ".join(f"{data.out_data} for {name}" for name, data in DATASETS.items())
# The help of eval --ood, from the tables of OOD sets and data sets.
_OOD_NAMED = "; ".join(f"{name}: {row.help}" + (f" (<data-dir>/{row.file}, or the path of a .mat file)" if row.file
                                                   else "") for name, row in OOD_SETS.items())
_OOD_DATA_SETS = "; ".join([f"{', '.join(CIFAR_NAMES)}: the test split"] + [
    f"{name}: its generated out-distribution" for name, row in DATASETS.items() if row.files is None])
_OOD_DEFAULT = (", ".join(f"{'+'.join(row.ood_sets)} for {name}" for name, row in DATASETS.items()) + "; then "
                + ", ".join(name for name, row in OOD_SETS.items() if row.default))


def flag_name(field: str) -> str:
    """The command-line flag of a setting: eps_in -> --eps-in."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class SettingInfo:
    """What a setting is besides its type and default: its flag's help and --help group, the values
    it may take (`choices`; `bounds` for check_number: at_least, at_most, above, below; for a list
    setting, each of its values)."""

    help: str
    group: str
    choices: tuple[str, ...] | None = None
    # With choices: an unknown value is "--flag: unknown <noun> 'x'; choose one of ..." in one line
    # (on the command line too); without a noun argparse refuses it with its usage text.
    noun: str | None = None
    bounds: dict = dataclasses.field(default_factory=dict)
    metavar: str | None = None
    has_flag: bool = True  # False: set only by --config FILE or the API
    negatable: bool = True  # a bool's flag comes with --no-<flag>; False: a plain on switch


def setting(default, group: str, help: str, *, choices=None, noun=None, metavar=None, has_flag=True,
            negatable=True, **bounds) -> dataclasses.Field:
    """A setting declared once: its default and its SettingInfo (read back by `about`)."""
    info = SettingInfo(help, group, choices, noun, bounds, metavar, has_flag, negatable)
    if isinstance(default, list):
        return dataclasses.field(default_factory=default.copy, metadata={"info": info})
    return dataclasses.field(default=default, metadata={"info": info})


def about(field: dataclasses.Field) -> SettingInfo:
    """The SettingInfo `setting` declared for a field."""
    return field.metadata["info"]


def declared_default(field: dataclasses.Field):
    """The default `setting` declared for a field."""
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def value_type(field: dataclasses.Field) -> tuple[str, bool]:
    """(the field's type as written, e.g. 'int' or 'tuple[float, ...]', and whether None (not set) is allowed)."""
    written = str(field.type)
    return written.removesuffix(" | None"), written.endswith(" | None")


def item_type(kind: str) -> str:
    """The type of each value of a list setting ('tuple[int, ...]' -> 'int'); another type as it is."""
    return kind.removeprefix("tuple[").removesuffix(", ...]")


def check_settings(config) -> None:
    """Raise UserError naming the flag for any value outside its declaration: every number finite
    and within its bounds (a NaN radius passes every "< 0" test and then never projects; an
    infinite weight makes every step non-finite), every name among its choices."""
    for field in dataclasses.fields(config):
        info, value, flag = about(field), getattr(config, field.name), flag_name(field.name)
        kind, may_be_unset = value_type(field)
        if value is None and may_be_unset:
            continue
        is_list = kind.startswith("tuple[")
        if is_list and not isinstance(value, (tuple, list)):
            raise UserError(f"{flag} must be a list of {item_type(kind)} values, got {value!r}")
        for item in value if is_list else (value,):
            if item_type(kind) in ("int", "float"):
                check_number(flag, item, integer=item_type(kind) == "int", **info.bounds)
            if info.choices is not None and info.noun is not None:
                lookup(dict.fromkeys(info.choices), item, flag, info.noun)
            elif info.choices is not None and item not in info.choices:
                raise UserError(f"{flag} must be one of {', '.join(info.choices)}, got {item!r}")


# Settings of several commands, each declared once here.

def device_setting(group: str) -> dataclasses.Field:
    return setting("auto", group, "auto, cpu, cuda or cuda:N")


def backend_setting(group: str) -> dataclasses.Field:
    return setting("auto", group, "fused attack step. " + choices_help(BACKENDS), choices=tuple(BACKENDS))


def weights_setting() -> dataclasses.Field:
    return setting("ema", OPTIONS, "the checkpoint's weights. " + choices_help(WEIGHTS), choices=tuple(WEIGHTS))


def run_data_dir_setting() -> dataclasses.Field:
    return setting(None, OPTIONS, "where the data sets are (default: the training run's --data-dir)")


@dataclass
class TrainConfig:
    dataset: str = setting("cifar10", DATA, "in-distribution: " + _DATASET_NAMES, choices=tuple(DATASETS),
                           noun="data set")
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
    workers: int | None = setting(None, DATA, "worker processes of each stream of the torch and dali loaders (0: in "
                                  "the main process; default: one per CPU core, at most 4)", metavar="N", at_least=0)
    synthetic_size: int | None = setting(None, DATA, "training images of the synthetic set (default: 10240)",
                                         at_least=1)
    augment: str = setting("autoaugment_cutout", DATA, "of both batches. " + choices_help(AUGMENTATIONS),
                           choices=tuple(AUGMENTATIONS))

    arch: str = setting("wrn34", MODEL, choices_help(ARCHITECTURES), choices=tuple(ARCHITECTURES),
                        noun="architecture")
    mode: str = setting("ratio", MODEL, choices_help(MODES), choices=tuple(MODES))
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

    attack: str = setting("pgd", ATTACKS, choices_help(TRAINING_ATTACKS), choices=tuple(TRAINING_ATTACKS))
    norm: str = setting(DEFAULT_NORM, ATTACKS, "threat model of both attacks. " + choices_help(NORMS),
                        choices=tuple(NORMS))
    # None: the --norm's (choices.NORMS), filled in when the config is made.
    eps_in: float | None = setting(None, ATTACKS, "radius of the in-distribution attack (default: "
                                   f"{per_norm('eps_in')})", at_least=0)
    eps_out: float | None = setting(None, ATTACKS, "radius of the out-distribution attack (default: "
                                    f"{per_norm('eps_out')})", at_least=0)
    steps_in: int = setting(10, ATTACKS, "in-distribution attack steps", at_least=0)
    steps_out: int = setting(20, ATTACKS, "out-distribution attack steps", at_least=0)
    step_size_in: float | None = setting(None, ATTACKS, "length of each in-distribution attack step in the norm "
                                         f"(default: {per_norm('step_size')})", above=0)
    step_size_out: float | None = setting(None, ATTACKS, "length of each out-distribution attack step in the norm "
                                          f"(default: {per_norm('step_size')})", above=0)
    attack_momentum: float = setting(0.9, ATTACKS, "ArgminPGD's momentum on the L1-normalized gradient (0: plain "
                                     "PGD)", **MOMENTUM_RANGE)
    lam: float = setting(1.0, ATTACKS, "weight of the out-distribution loss", at_least=0)
    trades_beta: float = setting(6.0, MODEL, "weight of TRADES' KL(p(x)||p(x_adv)) in the trades modes (TRADES' "
                                 "paper and the authors' default: 6)", at_least=0)
    trades_beta_out: float = setting(6.0, MODEL, "weight of the out-distribution KL(p(z)||p(z_adv)) in trades-ceda "
                                     "(the authors' default: 6)", at_least=0)
    train_clean: bool = setting(False, MODEL, "also CE on the clean x, weight 1 beside the adversarial term's (the "
                                "authors' train_clean; --mode " + ", ".join(
                                    name for name, row in MODES.items() if row.clean_in_optional) + ")", negatable=False)

    # Speed switches. None means "the fast choice for the device": on for CUDA, off for CPU.
    device: str = device_setting(SPEED)
    amp: bool | None = setting(None, SPEED, "mixed precision, perturbations stay fp32")
    amp_dtype: str = setting("bf16", SPEED, "autocast type under --amp. " + choices_help(AMP_TYPES),
                             choices=tuple(AMP_TYPES))
    channels_last: bool | None = setting(None, SPEED, "channels_last memory format")
    attack_schedule: str = setting("auto", SPEED, "how the in- and out-distribution attacks share the device. "
                                   + choices_help(SCHEDULES), choices=tuple(SCHEDULES))
    cuda_graphs: bool | None = setting(None, SPEED, "replay the attacks from a CUDA graph")
    compile: bool | None = setting(None, SPEED, "torch.compile the model")
    fp32_first_conv: bool = setting(True, SPEED, "under --amp, keep the first convolution in fp32 (small "
                                    "perturbations survive)")
    input_grad_only: bool = setting(True, SPEED, "attacks freeze the weights, so a compiled backward computes no "
                                    "weight gradients (eager autograd.grad(loss, x) skips them anyway)")
    fused_optimizer: bool = setting(True, SPEED, "SGD's fused single-kernel update")
    backend: str = backend_setting(SPEED)

    eval_samples: int = setting(1000, RUN, "test images for the per-epoch robust accuracy (0 to skip)", at_least=0)
    test_every: int = setting(1, RUN, "test the EMA (best.pt keeps the best clean accuracy among tested epochs) "
                              "after epochs 1, N+1, 2N+1, ... and after every epoch that begins at 80 percent of "
                              "--epochs or later, as the authors' --test_epochs N (their run: 10); 1: every epoch",
                              metavar="N", at_least=1)
    checkpoint_every: int | None = setting(None, RUN, "also checkpoint every STEPS optimizer steps (default: at "
                                           "the end of each epoch)", metavar="STEPS", at_least=1)
    checkpoint_epochs: int | None = setting(None, RUN, "also keep a copy of the checkpoint every K epochs "
                                            "(checkpoint-epoch-<E>.pt; default: none, or every epoch with "
                                            "--keep-last)", metavar="K", at_least=1)
    keep_last: int | None = setting(None, RUN, "keep only the N newest of those copies, older ones removed after "
                                    "each new one is written (default: all)", metavar="N", at_least=1)
    log_every: int | None = setting(None, RUN, "also log the mean step metrics (loss, in/out loss, accuracies, "
                                    "out-confidence, lr, img/s, skipped steps) of every STEPS steps to metrics.jsonl "
                                    "(rows of \"kind\": \"step\"; default: per epoch only)", metavar="STEPS",
                                    at_least=1)
    tensorboard: bool = setting(False, RUN, "also write the metrics as TensorBoard events to <run>/tensorboard (pip "
                                "install tensorboard)", negatable=False)
    max_skipped_steps: int = setting(20, RUN, "stop when this many steps in a row had a non-finite loss or "
                                     "gradient (they are skipped)", at_least=1)

    sync_bn: bool = setting(False, MULTI_GPU, "BatchNorm statistics over all ranks' batches", negatable=False)

    def __post_init__(self):
        check_settings(self)  # --norm among its choices before its row is read
        # The settings not given take the --norm's value; `flag_defaults` leaves them unset again.
        self._left_to_norm = tuple(name for name in NORM_DEFAULTS if getattr(self, name) is None)
        for name in self._left_to_norm:
            setattr(self, name, getattr(NORMS[self.norm], NORM_DEFAULTS[name]))
        self.validate()

    def flag_defaults(self) -> "TrainConfig":
        """This config with the settings it left to the --norm unset: the defaults of train's flags,
        so that a --norm given on the command line brings its own radii and step sizes."""
        defaults = copy.copy(self)
        for name in self._left_to_norm:
            setattr(defaults, name, None)
        return defaults

    def validate(self) -> "TrainConfig":
        """Raise UserError naming the flag for any value that cannot work."""
        check_settings(self)
        if self.batch_size % self.bn_groups:
            raise UserError(f"--batch-size {self.batch_size} must be divisible by --bn-groups {self.bn_groups} "
                            "(each BatchNorm group holds an equal share of the batch)")
        if self.bn_groups > 1 and self.sync_bn:
            raise UserError(f"--bn-groups {self.bn_groups} and --sync-bn exclude each other: one normalizes over "
                            "slices of the batch, the other over all processes' batches together")
        if self.train_clean and not MODES[self.mode].clean_in_optional:
            has_it = "it already trains on clean x" if MODES[self.mode].clean_in else "it has no such term"
            raise UserError(f"--train-clean does not apply to --mode {self.mode}: {has_it}")
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


# eval --quick: a first look in about a tenth of the time (README: "Evaluate, explain, export").
# Fewer images under attack (with their 95 % interval), fewer APGD steps and targets, smaller
# OOD sets; the clean accuracy keeps every test image. A setting given with --quick wins.
QUICK_EVAL = {"robust_samples": 500, "steps": 25, "targets": 3, "ood_samples": 500, "ood_steps": 25}


@dataclass(frozen=True)
class EvalConfig:
    """What `ratio-fast eval` measures and how (evaluation.evaluate.evaluate_model reads it); the
    defaults are the authors' evaluation: APGD-CE and APGD-T at the run's radius, all test images."""

    weights: str = weights_setting()
    data_dir: str | None = run_data_dir_setting()
    device: str = device_setting(OPTIONS)
    backend: str = backend_setting(OPTIONS)
    quick: bool = setting(False, OPTIONS, "a first look in about a tenth of the time: " + " ".join(
        f"{flag_name(name)} {value}" for name, value in QUICK_EVAL.items()) + " (flags given with it win)",
        negatable=False)

    norm: str | None = setting(None, ROBUST, "threat model of the robust accuracy and the worst-case OOD attack "
                               "(default: the run's --norm). " + choices_help(NORMS), choices=tuple(NORMS))
    eps: float | None = setting(None, ROBUST, "attack radius (default: the run's --eps-in in the run's --norm, "
                                f"else {per_norm('eps_in')})", at_least=0)
    radii: tuple[float, ...] = setting((), ROBUST, "comma list of more radii in --norm: the robust accuracy under "
                                       "--attacks at each as well, drawn with --eps's as robust_vs_radius.png",
                                       above=0)
    attacks: tuple[str, ...] = setting(tuple(EVAL_ATTACKS), ROBUST, "comma list, run in this order, each on the "
                                       f"points still robust. {choices_help(EVAL_ATTACKS)}; or none",
                                       choices=tuple(EVAL_ATTACKS), noun="attack")
    steps: int = setting(100, ROBUST, "APGD steps per attack (per target class for a targeted one)", at_least=1)
    targets: int = setting(9, ROBUST, "target classes of a targeted attack, most likely first (at most the "
                           "model's classes but one)", at_least=1)
    autoattack: bool = setting(False, ROBUST, "also AutoAttack's standard version in --norm, run by its package "
                               '(pip install "ratio-fast[eval]")', negatable=False)
    robust_samples: int = setting(0, ROBUST, "first test images under attack (0: all, the authors' protocol; fewer "
                                  "get a 95% CI)", at_least=0)

    ood: tuple[str, ...] | None = setting(None, OOD, f"comma list of out-distribution sets. {_OOD_NAMED}; "
                                          f"{_OOD_DATA_SETS}; .npy files, image directories; none to skip (default: "
                                          f"{_OOD_DEFAULT}; minus the run's training out-distribution)")
    ood_samples: int = setting(1000, OOD, "images per out-distribution set (0: all)", at_least=0)
    skip_bad_images: bool = setting(False, OOD, "leave out the images of --ood folders that cannot be decoded "
                                    "(counted in a note) instead of stopping", negatable=False)
    ood_eps: float | None = setting(None, OOD, "radius of the worst-case attack (maximizes confidence; default: "
                                    f"{per_norm('eps_out')})", at_least=0)
    ood_steps: int = setting(100, OOD, "APGD steps of the worst-case attack (0: skip it)", at_least=0)

    samples: int = setting(0, RUN, "test images for clean accuracy and OOD (0: all)", at_least=0)
    batch_size: int = setting(256, RUN, "images per forward; attacks run in pieces of this size", at_least=1)
    seed: int = setting(0, RUN, "seeds the attacks' random starts (0 to 2**63-1)", **SEED_RANGE)
    cuda_graphs: bool | None = setting(None, RUN, "replay the attack calls from CUDA graphs")

    def __post_init__(self):
        self.validate()

    def validate(self) -> "EvalConfig":
        check_settings(self)
        if len(set(self.attacks)) < len(self.attacks):
            raise UserError(f"--attacks: {','.join(self.attacks)} names an attack twice")
        return self

    def quickened(self, given) -> "EvalConfig":
        """With --quick, QUICK_EVAL's values for the settings not named in `given` (a flag or an
        argument the user gave wins); without it, as it is."""
        if not self.quick:
            return self
        return dataclasses.replace(self, **{name: value for name, value in QUICK_EVAL.items() if name not in given})

    def for_run(self, run: TrainConfig | None = None) -> "EvalConfig":
        """These settings with the threat model filled in: --norm, else `run`'s (without a run, the
        default); --eps, else the radius the model was trained at (`run`'s --eps-in) if in that
        norm, else the norm's; --ood-eps, else the norm's out-distribution radius."""
        norm = self.norm or (run.norm if run is not None else DEFAULT_NORM)
        eps = self.eps
        if eps is None:
            eps = run.eps_in if run is not None and run.norm == norm else NORMS[norm].eps_in
        ood_eps = NORMS[norm].eps_out if self.ood_eps is None else self.ood_eps
        return dataclasses.replace(self, norm=norm, eps=eps, ood_eps=ood_eps)


@dataclass(frozen=True)
class CounterfactualsConfig:
    """What `ratio-fast counterfactuals` draws, the authors' radii and APGD steps by default
    (evaluation/counterfactuals.py takes its defaults from here)."""

    weights: str = weights_setting()
    images: tuple[int, ...] = setting(tuple(range(8)), OPTIONS, "comma list of test-set indices")
    target: str = setting("runner-up", OPTIONS, f"{choices_help(COUNTERFACTUAL_TARGETS)}; or a class number, for "
                          "every image")
    start: str = setting("random", OPTIONS, choices_help(COUNTERFACTUAL_STARTS), choices=tuple(COUNTERFACTUAL_STARTS),
                         noun="start")
    seed: int = setting(0, OPTIONS, "seeds the random start (0 to 2**63-1)", **SEED_RANGE)
    norm: str | None = setting(None, OPTIONS, "threat model of the attacks (default: the run's --norm). "
                               + choices_help(NORMS), choices=tuple(NORMS))
    radii: tuple[float, ...] | None = setting(None, OPTIONS, f"comma list of radii in --norm (default: "
                                              f"{per_norm('radii')})", above=0)
    steps: int = setting(500, OPTIONS, "APGD steps per radius", at_least=1)
    batch_size: int = setting(256, OPTIONS, "images x radii per attack batch", at_least=1)
    differences: bool = setting(False, OPTIONS, "add under each image a row of |counterfactual - original|, each "
                                "tile stretched to its own maximum")
    data_dir: str | None = run_data_dir_setting()
    device: str = device_setting(OPTIONS)
    backend: str = backend_setting(OPTIONS)

    def __post_init__(self):
        check_settings(self)
        if self.target_class is None and self.target not in COUNTERFACTUAL_TARGETS:
            raise UserError(f"--target must be {', '.join(COUNTERFACTUAL_TARGETS)} or a class number, "
                            f"got {self.target!r}")

    @property
    def target_class(self) -> int | None:
        """The one class --target names for every image; None when it names a rule."""
        return int(self.target) if self.target.isascii() and self.target.isdigit() else None

    def check_target(self, num_classes: int) -> None:
        """UserError unless --target is a rule or a class of a model of `num_classes` classes."""
        if self.target_class is not None and self.target_class >= num_classes:
            raise UserError(f"--target must be {', '.join(COUNTERFACTUAL_TARGETS)} or a class in "
                            f"0..{num_classes - 1}, got {self.target!r}")

    def for_run(self, run: TrainConfig | None = None) -> "CounterfactualsConfig":
        """These settings with --norm (else `run`'s) and --radii (else the norm's) filled in."""
        norm = self.norm or (run.norm if run is not None else DEFAULT_NORM)
        return dataclasses.replace(self, norm=norm, radii=NORMS[norm].radii if self.radii is None else self.radii)


@dataclass(frozen=True)
class ExportConfig:
    """What `ratio-fast export` writes (evaluation/export.py takes its default from here)."""

    weights: str = weights_setting()

    def __post_init__(self):
        check_settings(self)


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
