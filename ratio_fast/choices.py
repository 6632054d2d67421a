"""The user-facing choices, one table each: every value a flag takes, as a row with its name, its
one-line help and the facts the code branches on.

Plain Python, no torch or numpy, importing nothing (not even of this package): config.py
builds flags, help and checks from these tables, and the machinery looks the facts up in a row
instead of comparing names. A table is a dict of frozen dataclass rows keyed by name, as `datasets.py` holds the data sets. Where code
stands behind each row (a class per loader kind, a builder per attack), the module holding that
code keeps a builder table and calls `check_builders` at import, so a row without code, or code
without a row, fails at once.

The tables follow the flow of a run: data (--augment, --loader), models (--arch), the threat
model (norms), attacks (train --attack, eval --attacks), training (--mode, --attack-schedule,
--amp-dtype, --backend), evaluation (--weights, the built-in --ood sets),
counterfactuals (--start, --target).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def table(*rows) -> dict:
    """Rows keyed by their name, in the given order: the order of a flag's choices and of its help."""
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"a table names a row twice: {names}")
    return {row.name: row for row in rows}


def choices_help(rows: dict) -> str:
    """'a: help of a; b: help of b': the part of a flag's help that lists its values."""
    return "; ".join(f"{name}: {row.help}" for name, row in rows.items())


def rows_where(rows: dict, **facts) -> dict:
    """The rows whose attributes have the given values, in table order: a table of its own."""
    return {name: row for name, row in rows.items() if all(getattr(row, k) == v for k, v in facts.items())}


def check_builders(builders: dict, names: Iterable[str], where: str) -> None:
    """Called at import by a builder table (row name -> code): it must cover exactly `names`."""
    missing, extra = set(names) - set(builders), set(builders) - set(names)
    if missing or extra:
        raise RuntimeError(f"{where}: rows without a builder {sorted(missing)}, builders without a row {sorted(extra)}")


# ---- --augment ------------------------------------------------------------------------------

MEAN_COLOUR = "mean colour"  # a fill: the data set's mean colour (as uint8, int(255 * mean) per channel)
ZERO = "zero"  # a fill: black


@dataclass(frozen=True)
class Augmentation:
    """An --augment value: what happens to every training image, in- and out-distribution alike."""

    name: str
    help: str
    crop_fill: str | None  # random crop from a 4-pixel padding of MEAN_COLOUR or ZERO, then a flip; None: neither
    autoaugment: bool  # AutoAugment's CIFAR-10 policy after the flip (shear and translate fill: the mean colour)
    cutout_size: int  # side of the Cutout square (DeVries & Taylor), filled with the mean colour; 0: no Cutout


AUGMENTATIONS: dict[str, Augmentation] = table(
    Augmentation("autoaugment_cutout", "the authors' (crop from a 4-pixel padding of the mean colour, flip, "
                 "AutoAugment's CIFAR-10 policy, a 16x16 Cutout of the mean colour)",
                 crop_fill=MEAN_COLOUR, autoaugment=True, cutout_size=16),
    Augmentation("crop_flip", "crop from a zero padding and flip", crop_fill=ZERO, autoaugment=False, cutout_size=0),
    Augmentation("none", "the images as they are", crop_fill=None, autoaugment=False, cutout_size=0),
)


# ---- --loader -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderOption:
    """A --loader value: a loader kind, or `auto`, which picks one. No kind needs CUDA: each also
    runs on a CPU (the gpu kind then holds the set in host memory)."""

    name: str
    help: str
    title: str  # what the run log calls it
    picks: bool = False  # auto: not a kind, the choice of one (data/loaders.py)
    streams: bool = False  # worker processes read the set batch by batch (any size); False: all of it on the device
    exact_autoaugment: bool = True  # its AutoAugment equals PIL's bit for bit; False: only its other operations do
    package: str | None = None  # the module it needs besides the dependencies (not imported to check)
    install: str | None = None  # the pip package that provides it

    def gives_reference_batches(self, augmentation: Augmentation) -> bool:
        """Whether its batches under `augmentation` are the reference's (the gpu loader's, which
        tests/test_data_autoaugment.py checks against PIL) bit for bit. `auto` picks only such loaders."""
        return self.exact_autoaugment or not augmentation.autoaugment


LOADERS: dict[str, LoaderOption] = table(
    LoaderOption("auto", "the fastest loader that can hold the set and gives the reference batches for --augment, "
                 "measured on CUDA and cached", "auto", picks=True),
    LoaderOption("gpu", "the whole uint8 set on the device, augmented there", "device-resident"),
    LoaderOption("dali", "an NVIDIA DALI pipeline fed by worker processes (its AutoAugment is close to PIL's, "
                 "not equal)", "DALI", streams=True, exact_autoaugment=False, package="nvidia.dali",
                 install="nvidia-dali-cuda130"),
    LoaderOption("torch", "DataLoader worker processes augment on the CPU", "DataLoader", streams=True),
)
LOADER_KINDS = tuple(name for name, row in LOADERS.items() if not row.picks)


def same_batches(loader: str, other: str, augment: str) -> bool:
    """Whether --loader `loader` and --loader `other` give the same batches, bit for bit, under
    --augment `augment`: they are the same, or both give the reference batches."""
    augmentation = AUGMENTATIONS[augment]
    return loader == other or all(LOADERS[name].gives_reference_batches(augmentation) for name in (loader, other))


# ---- --arch ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """An --arch value; models/ builds it (its builder table is checked against these rows)."""

    name: str
    help: str


ARCHITECTURES: dict[str, Architecture] = table(
    Architecture("wrn34", "WideResNet-34-10, pre-activation (the authors')"),
    Architecture("wrn28", "WideResNet-28-10"),
    Architecture("resnet18", "ResNet-18"),
    Architecture("resnet50", "ResNet-50"),
    Architecture("tiny", "a small network for tests and the CPU demo"),
)


# ---- threat models --------------------------------------------------------------------------


@dataclass(frozen=True)
class Norm:
    """A threat model (--norm): the set the perturbation delta of an attack stays in (and x + delta
    in [0, 1]), with the radii and step sizes every command takes in it unless told otherwise.
    ops/ holds each norm's fused step and random start."""

    name: str
    help: str
    title: str  # in tables and logs
    autoattack: str  # AutoAttack's name of it (its norm=), which is also RobustBench's threat model
    eps_in: float  # train --eps-in; eval --eps for a model trained in another norm
    eps_out: float  # train --eps-out; eval --ood-eps
    step_size: float  # train --step-size-in and --step-size-out
    radii: tuple[float, ...]  # counterfactuals --radii


NORMS: dict[str, Norm] = table(
    # The authors' CIFAR settings (utils/run_file_helpers.py: eps, step size; their RATIO runs'
    # --od_eps_factor 2 for the out-distribution); the counterfactual radii in L2 are theirs.
    Norm("l2", "the L2 ball ||delta||_2 <= eps", "L2", "L2", eps_in=0.5, eps_out=1.0, step_size=0.1,
         radii=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0)),
    Norm("linf", "the L-infinity box |delta_j| <= eps for every pixel", "L-infinity", "Linf",
         eps_in=8 / 255, eps_out=16 / 255, step_size=2 / 255, radii=(8 / 255, 16 / 255, 32 / 255, 64 / 255)),
)
DEFAULT_NORM = "l2"  # the paper's threat model, and that of every run saved before --norm


def per_norm(fact: str) -> str:
    """'L2 0.5; L-infinity 8/255': a fact of every norm, for a flag's help (fractions of 255 as such)."""
    def shown(value):
        if isinstance(value, tuple):
            return ",".join(shown(v) for v in value)
        in_255ths = value * 255
        return f"{round(in_255ths)}/255" if abs(in_255ths - round(in_255ths)) < 1e-9 and value < 1 else f"{value:g}"
    return "; ".join(f"{row.title} {shown(getattr(row, fact))}" for row in NORMS.values())


# ---- train --attack, eval --attacks ---------------------------------------------------------

TRAIN = "train"  # a command that offers attacks by name
EVAL = "eval"


@dataclass(frozen=True)
class Attack:
    """An attack by name. `train --attack` names the attack of both distributions (its builder:
    attacks/named.py), `eval --attacks` the attacks of the robust accuracy, run in order on the
    points still robust (their builders: evaluation/evaluate.py)."""

    name: str
    help: str
    command: str  # TRAIN or EVAL: the command whose flag offers it
    shares_batch: bool = False  # the in- and out-distribution attacks can run as one concatenated batch
    targeted: bool = False  # attacks each image once per target class (eval --targets of them)


ATTACKS: dict[str, Attack] = table(
    Attack("pgd", "the authors' ArgminPGD", TRAIN, shares_batch=True),
    Attack("apgd", "APGD (step-size schedule, stronger, same cost)", TRAIN),
    Attack("apgd-ce", "APGD on cross-entropy", EVAL),
    Attack("apgd-t", "APGD, targeted DLR", EVAL, targeted=True),
)
TRAINING_ATTACKS = rows_where(ATTACKS, command=TRAIN)
EVAL_ATTACKS = rows_where(ATTACKS, command=EVAL)


# ---- --mode ---------------------------------------------------------------------------------

CLEAN = "clean"  # a loss term's images as the loader gives them
ADVERSARIAL = "adversarial"  # a loss term's images after the attack that maximizes its objective
CE = "ce"  # the in-distribution attack of Madry et al.: maximize the cross-entropy (attacks/objectives.py)
TRADES_KL = "trades_kl"  # TRADES' attack: maximize KL(p(x) || p(x_adv)), p(x) the clean prediction
KL_UNIFORM = "kl_uniform"  # the out-distribution term and its attack: KL(U || p), U uniform


@dataclass(frozen=True)
class Mode:
    """A --mode value, a training type of the in/out-robustness family, as the authors' code
    (utils/train_types/) weighs it. The loss of one step, in ONE train-mode forward of the joined
    batch [x, x_adv, z, z_adv] (the images a term needs, in this order):

        loss = in_weight * in_part + out_weight * lam * out_part
        in_part  = CE(f(x))                          if clean_in (or --train-clean where clean_in_optional)
                 + CE(f(x_adv))                      if in_attack is CE
                 + trades_beta * KL(p(x) || p(x_adv)) if in_attack is TRADES_KL
        out_part = KL(U || p(z or z_adv))            as out_images says
                 + trades_beta_out * KL(p(z) || p(z_adv))  if out_trades

    each a mean over its batch (KL: summed over classes, TRADES' 'batchmean'). An attack
    maximizes its term's objective within --eps-in / --eps-out with --attack; TRADES' target
    p(x) is the clean prediction, computed once without gradient before the attack.
    """

    name: str
    help: str
    in_attack: str | None  # CE, TRADES_KL, or None: no in-distribution attack
    out_images: str | None  # CLEAN, ADVERSARIAL: what the KL(U || p) term sees; None: no out-distribution data
    in_weight: float = 1.0  # the authors' id_weight
    out_weight: float = 0.0  # the authors' od_weight, times --lam
    clean_in: bool = True  # the in part has CE on the clean images
    clean_in_optional: bool = False  # --train-clean adds that term (the authors' train_clean, weight 1)
    out_trades: bool = False  # the out part has TRADES' KL on z, its attack maximizing it (trades-ceda)

    @property
    def attacks_in(self) -> bool:
        return self.in_attack is not None

    @property
    def out_attack(self) -> str | None:
        """The objective the out-distribution attack maximizes, or None: no out-distribution attack."""
        return TRADES_KL if self.out_trades else KL_UNIFORM if self.out_images == ADVERSARIAL else None

    @property
    def attacks_out(self) -> bool:
        return self.out_attack is not None

    @property
    def uses_out_data(self) -> bool:
        return self.out_images is not None

    @property
    def in_trades(self) -> bool:
        return self.in_attack == TRADES_KL

    def trains_on_clean_in(self, train_clean: bool) -> bool:
        """Whether the train forward sees the clean x: its CE term, or TRADES' target p(x)."""
        return self.clean_in or (train_clean and self.clean_in_optional) or self.in_trades

    def trains_on_clean_out(self) -> bool:
        """Whether the train forward sees the clean z: the CEDA term, or TRADES' target p(z)."""
        return self.out_images == CLEAN or self.out_trades


MODES: dict[str, Mode] = table(
    Mode("plain", "CE on clean x, no attacks", None, None),
    Mode("ceda", "CEDA / Outlier Exposure: CE on x + lam KL(U||p) on clean z, no attacks", None, CLEAN,
         out_weight=1.0),
    Mode("acet", "ACET: CE on x + lam KL(U||p) on z_adv (out-distribution attack only)", None, ADVERSARIAL,
         out_weight=1.0),
    Mode("at", "adversarial training (Madry et al.): CE on x_adv, no out-distribution data", CE, None,
         clean_in=False),
    Mode("trades", "TRADES: CE on x + beta KL(p(x)||p(x_adv)), no out-distribution data", TRADES_KL, None),
    Mode("ratio", "RATIO (the authors' AdvACET): 0.5 CE on x_adv + 0.5 lam KL(U||p) on z_adv, both attacked",
         CE, ADVERSARIAL, in_weight=0.5, out_weight=0.5, clean_in=False, clean_in_optional=True),
    Mode("trades-ceda", "0.5 TRADES on x + 0.5 lam (KL(U||p(z)) + beta-out KL(p(z)||p(z_adv)))", TRADES_KL, CLEAN,
         in_weight=0.5, out_weight=0.5, out_trades=True),
    Mode("trades-acet", "0.5 TRADES on x + 0.5 lam KL(U||p) on z_adv", TRADES_KL, ADVERSARIAL,
         in_weight=0.5, out_weight=0.5),
)


# ---- --attack-schedule ----------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """An --attack-schedule value: how a step's in- and out-distribution attacks share the device.
    All compute the same adversarial examples (one batch up to the rounding of a larger batch).
    attacks/schedule.py runs each; training/attack_phase.py measures `auto`'s candidates."""

    name: str
    help: str
    picks: bool = False  # auto: not a schedule, the measured choice between the candidates
    candidate: bool = False  # auto measures it
    concurrent: bool = False  # two CUDA streams at once; one stream (a CPU) runs it as SEQUENTIAL
    one_batch: bool = False  # one concatenated batch: only for attacks whose row shares_batch


SEQUENTIAL = "sequential"  # the schedule of one stream, and of auto without a GPU to measure on
SCHEDULES: dict[str, Schedule] = table(
    Schedule("auto", "measured once per GPU and setting, then cached", picks=True),
    Schedule(SEQUENTIAL, "one after the other (the authors' order)"),
    Schedule("streams", "on two CUDA streams at once", candidate=True, concurrent=True),
    Schedule("concat", "as one concatenated batch", candidate=True, one_batch=True),
)
SCHEDULE_KINDS = tuple(name for name, row in SCHEDULES.items() if not row.picks)


def schedule_candidates(attack: str) -> tuple[str, ...]:
    """The schedules `auto` chooses among for --attack `attack`."""
    return tuple(name for name, row in SCHEDULES.items()
                 if row.candidate and (ATTACKS[attack].shares_batch or not row.one_batch))


# ---- --amp-dtype ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AmpType:
    """An --amp-dtype value (training/speed.py holds the torch dtype of each)."""

    name: str
    help: str
    grad_scaler: bool  # its narrow exponent underflows small gradients: the loss is scaled
    advice: str  # what to try when the steps keep diverging


AMP_TYPES: dict[str, AmpType] = table(
    AmpType("bf16", "bfloat16, fp32's exponent range", grad_scaler=False, advice="lower --lr, or try --no-amp"),
    AmpType("fp16", "float16, with a gradient scaler", grad_scaler=True,
            advice="lower --lr, or use --amp-dtype bf16 (fp16 overflows sooner)"),
)


# ---- --backend ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A --backend value: which implementation runs the fused attack ops (ops/)."""

    name: str
    help: str
    picks: bool = False  # auto: not a backend, the choice of one by the tensors' device


BACKENDS: dict[str, Backend] = table(
    Backend("auto", "Triton on CUDA, torch on CPU", picks=True),
    Backend("triton", "the Triton kernels"),
    Backend("native", "the C++/OpenMP or CUDA kernels of kernels/, built by pip install"),
    Backend("torch", "the plain-torch reference"),
)


# ---- --weights ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """A --weights value: which of a checkpoint's weights eval, counterfactuals and export take."""

    name: str
    help: str
    title: str  # what the evaluation table calls them


WEIGHTS: dict[str, Weights] = table(
    Weights("ema", "the exponential moving average of training (the authors')", "EMA weights"),
    Weights("model", "the raw model's", "raw model weights (not the EMA)"),
)


# ---- eval --ood -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OodSet:
    """A named --ood set besides the data sets (evaluation/ood_sets.py makes or reads each)."""

    name: str
    help: str
    default: bool  # among eval's default sets
    file: str | None = None  # read from this file in --data-dir; None: generated, nothing to download


OOD_SETS: dict[str, OodSet] = table(
    OodSet("uniform-noise", "uniform noise", default=True),
    OodSet("smooth-noise", "blurred noise stretched to [0,1]", default=True),
    OodSet("permuted-pixels", "test images with shuffled pixels", default=True),
    OodSet("svhn", "SVHN's test split", default=False, file="test_32x32.mat"),
)


# ---- counterfactuals --start, --target --------------------------------------------------------


@dataclass(frozen=True)
class CounterfactualStart:
    """A counterfactuals --start value: where APGD begins in each radius's ball."""

    name: str
    help: str
    random: bool  # a random point on the radius's sphere, drawn from --seed; False: the image itself


COUNTERFACTUAL_STARTS: dict[str, CounterfactualStart] = table(
    CounterfactualStart("random", "a random point on the sphere of each radius around the image, clipped to "
                                  "[0,1], drawn from --seed (the authors' APGD)", random=True),
    CounterfactualStart("image", "the image itself: no radius ends less confident in the target than the image",
                        random=False),
)


@dataclass(frozen=True)
class CounterfactualTarget:
    """A counterfactuals --target rule (evaluation/counterfactuals.py holds the code of each)."""

    name: str
    help: str


COUNTERFACTUAL_TARGETS: dict[str, CounterfactualTarget] = table(
    CounterfactualTarget("runner-up", "per image, the most likely class but its label"),
    CounterfactualTarget("true", "per image, its label (the authors' first row)"),
    CounterfactualTarget("predicted", "per image, the model's prediction (the authors' second row)"),
    CounterfactualTarget("spread", "the i-th image towards its label + 1 + (i mod (classes - 1)), modulo the "
                                   "classes: never its own class, and every class in turn (a demo across classes)"),
)
