"""Evaluation of a trained model: clean and robust accuracy, OOD detection (clean and worst case).

`clean_accuracy` / `robust_accuracy` are the quick per-epoch numbers of a training run.
`evaluate_model` is the full, resumable evaluation behind `ratio-fast eval`: it is cut into
parts (clean, each attack, each out-distribution set), each part into batches, and every
finished batch's per-sample results go into an `EvalState` file, so a killed run continues
where it stopped and a re-run with more parts computes only the new ones. Attacks draw their
random starts from a generator seeded by (seed, part, batch): resumed and uninterrupted runs
give the same numbers.
"""
from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .apgd import APGD, APGDTargeted, eval_mode
from .attacks import L2PGD
from .checkpoint import atomic_save
from .errors import UserError
from .ood import max_confidence, ood_metrics
from .progress import Progress

ROBUST_ATTACKS = ("apgd-ce", "apgd-t")


@torch.no_grad()
def clean_accuracy(model: torch.nn.Module, batches) -> float:
    """Fraction of correct top-1 predictions over an iterable of (x, y) batches, model in eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct = correct + (model(x).argmax(1) == y).sum()
        total += y.shape[0]
    model.train(was_training)
    return float(correct) / max(total, 1)


def robust_accuracy(model: torch.nn.Module, batches, attack: L2PGD) -> float:
    """Fraction still classified correctly after `attack` (an upper bound on the true robust accuracy).

    `attack` is any object called as attack(model, x, y) -> x_adv: L2PGD, APGD, APGDTargeted.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        x_adv = attack(model, x, y)
        with torch.no_grad():
            correct = correct + (model(x_adv).argmax(1) == y).sum()
        total += y.shape[0]
    model.train(was_training)
    return float(correct) / max(total, 1)


@dataclass(frozen=True)
class EvalSettings:
    """What `ratio-fast eval` measures; defaults follow the authors' evaluation."""

    eps: float = 0.5  # L2 radius of the robust accuracy
    steps: int = 100  # APGD steps per attack (and per target for apgd-t)
    attacks: tuple[str, ...] = ROBUST_ATTACKS
    targets: int = 9  # apgd-t target classes (AutoAttack: 9)
    robust_samples: int = 1000  # first test images under attack; 0: all
    autoattack: bool = False  # also AutoAttack's standard L2 version (the `autoattack` package)
    ood_eps: float = 1.0  # radius of the worst-case OOD attack (maximizes max confidence)
    ood_steps: int = 100  # its APGD steps; 0 skips the worst case
    batch_size: int = 256
    seed: int = 0
    backend: str = "auto"

    def validate(self) -> "EvalSettings":
        for name in ("eps", "steps", "robust_samples", "ood_eps", "ood_steps", "seed"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("targets", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        unknown = [a for a in self.attacks if a not in ROBUST_ATTACKS]
        if unknown:
            raise UserError(f"--attacks: unknown attack {unknown[0]!r}; choose from {', '.join(ROBUST_ATTACKS)}")
        return self


class EvalState:
    """Per-batch results of an evaluation, kept in one file rewritten atomically.

    `identity` says what is evaluated (checkpoint, weights, batch size, seed: whatever changes
    the per-batch results without changing the part names); a file written for another
    identity is refused rather than mixed in.
    """

    def __init__(self, path: str | Path, identity: dict, save_interval: float = 5.0):
        self.path, self.identity, self.save_interval = Path(path), identity, save_interval
        self.parts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        if self.path.exists():
            try:
                saved = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as e:  # any unreadable file: the message tells the user what to do
                raise UserError(f"evaluation state {self.path}: unreadable ({e}); delete it to start over") from None
            if not isinstance(saved, dict) or "parts" not in saved:
                raise UserError(f"evaluation state {self.path}: not a ratio-fast evaluation state; delete it to start over")
            if saved.get("identity") != identity:
                raise UserError(f"evaluation state {self.path} belongs to another evaluation "
                                f"({saved.get('identity')}); use another --out or delete it")
            self.parts = saved["parts"]
        self._last_save = time.perf_counter()

    def done(self, part: str, batch: int) -> bool:
        return batch in self.parts.get(part, {})

    def put(self, part: str, batch: int, result: dict[str, torch.Tensor]) -> None:
        self.parts.setdefault(part, {})[batch] = {k: v.detach().cpu() for k, v in result.items()}
        if time.perf_counter() - self._last_save >= self.save_interval:
            self.save()

    def save(self) -> None:
        atomic_save(self.path, {"what": "ratio-fast evaluation state", "identity": self.identity,
                                "parts": self.parts})
        self._last_save = time.perf_counter()

    def collect(self, part: str, batches: int) -> dict[str, torch.Tensor]:
        """The part's results over batches 0..batches-1, concatenated per key."""
        stored = self.parts[part]
        return {key: torch.cat([stored[b][key] for b in range(batches)]) for key in stored[0]}


Measure = Callable[[torch.Tensor, torch.Tensor | None, torch.Generator], dict]


def run_part(state: EvalState, part: str, source: "BatchSource", measure: Measure, seed: int) -> dict:
    """Measure every batch of a part not yet in `state`, saving as it goes; return all its results.

    measure(x, y, generator) -> dict of per-sample tensors; the generator is seeded by
    (seed, part, batch), so a batch gives the same result whenever it is computed.
    """
    todo = [b for b in range(source.batches) if not state.done(part, b)]
    if todo:
        progress = Progress(len(todo), desc=part)
        for b in todo:
            x, y = source.batch(b)
            generator = torch.Generator(device=x.device).manual_seed(_batch_seed(seed, part, b))
            state.put(part, b, measure(x, y, generator))
            progress.update(1)
        progress.close()
        state.save()
    return state.collect(part, source.batches)


def _batch_seed(seed: int, part: str, batch: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(part.encode()) * 10_007 + batch) % (2**63)


def evaluate_model(model: torch.nn.Module, test: "BatchSource", ood_sets: dict[str, "BatchSource"],
                   settings: EvalSettings, state: EvalState) -> dict:
    """Every metric of `settings` on `test` (labelled) and the unlabelled `ood_sets`; a JSON-ready dict.

    OOD sets are scored against the clean in-distribution scores of all of `test`; the worst
    case attacks the OOD inputs only (maximizing the max log-confidence in the L2 ball).
    """
    s = settings
    seed = s.seed

    def clean(x, y, _generator):
        logits = _no_grad(model, x)
        return {"correct": logits.argmax(1) == y, "conf": max_confidence(logits)}

    def ood_clean(x, _y, _generator):
        return {"conf": max_confidence(_no_grad(model, x))}

    worst_attack = APGD(s.ood_eps, s.ood_steps, objective="max_conf", backend=s.backend)

    def ood_worst(x, _y, generator):
        return {"conf": max_confidence(_no_grad(model, worst_attack(model, x, generator=generator)))}

    with eval_mode(model):
        results: dict = {"samples": test.size}
        clean_part = run_part(state, f"clean, {test.size} images", test, clean, seed)
        results["clean_accuracy"] = float(clean_part["correct"].double().mean())
        results["mean_max_conf_in"] = float(clean_part["conf"].double().mean())

        attacks = {name: _robust_attack(name, s) for name in s.attacks}
        if s.autoattack:
            attacks["autoattack"] = AutoAttackStandard(s.eps, s.seed)
        if attacks and s.eps > 0:
            robust_set = test.first(s.robust_samples) if s.robust_samples else test
            robust = {"eps": s.eps, "steps": s.steps, "samples": robust_set.size}
            still_correct = clean_part["correct"][:robust_set.size].clone()
            for name, attack in attacks.items():
                correct = run_part(state, _robust_part_name(name, s, robust_set.size), robust_set,
                                   _attacked_correct(model, attack), seed)["correct"]
                robust[name] = float(correct.double().mean())
                still_correct &= correct
            robust["all"] = float(still_correct.double().mean())  # worst case over the attacks run
            results["robust"] = robust

        results["ood"] = {}
        for name, source in ood_sets.items():
            conf = run_part(state, f"ood {name}, clean, {source.size} images", source, ood_clean, seed)["conf"]
            metrics = ood_metrics(clean_part["conf"], conf)
            if s.ood_steps > 0 and s.ood_eps > 0:
                part = f"ood {name}, worst case L2 {s.ood_eps}, {s.ood_steps} steps, {source.size} images"
                worst = run_part(state, part, source, ood_worst, seed)["conf"]
                metrics.update({f"worst_case_{k}": v for k, v in ood_metrics(clean_part["conf"], worst).items()})
                metrics.update(worst_case_eps=s.ood_eps, worst_case_steps=s.ood_steps)
            metrics["samples"] = source.size
            results["ood"][name] = metrics
    results["settings"] = {**asdict(s), "attacks": list(s.attacks)}
    return results


def _robust_part_name(name: str, s: EvalSettings, samples: int) -> str:
    if name == "autoattack":
        return f"autoattack standard, L2 {s.eps}, {samples} images"
    targets = f", {s.targets} targets" if name == "apgd-t" else ""
    return f"{name}, L2 {s.eps}, {s.steps} steps{targets}, {samples} images"


def _robust_attack(name: str, s: EvalSettings):
    if name == "apgd-ce":
        return APGD(s.eps, s.steps, objective="ce", backend=s.backend)
    return APGDTargeted(s.eps, s.steps, targets=s.targets, backend=s.backend)


def _attacked_correct(model, attack):
    def measure(x, y, generator):
        x_adv = attack(model, x, y, generator=generator)
        return {"correct": _no_grad(model, x_adv).argmax(1) == y}
    return measure


def _no_grad(model, x):
    with torch.no_grad():
        return model(x)


class AutoAttackStandard:
    """AutoAttack's standard L2 version from the third-party `autoattack` package (fra31/auto-attack).

    Imported only when asked for; not a dependency of ratio-fast.
    """

    def __init__(self, eps: float, seed: int = 0):
        try:
            from autoattack import AutoAttack
        except ImportError:
            raise UserError("--autoattack needs the autoattack package: "
                            "pip install git+https://github.com/fra31/auto-attack") from None
        self.eps, self.seed, self._cls = eps, seed, AutoAttack

    def __call__(self, model, x, y, generator=None):
        adversary = self._cls(model, norm="L2", eps=self.eps, version="standard", device=x.device,
                              verbose=False, seed=self.seed)
        with torch.no_grad():  # AutoAttack computes its own gradients inside
            return adversary.run_standard_evaluation(x, y, bs=x.shape[0])


class BatchSource:
    """A data set on the device in fixed, in-order batches: `batch(i)` -> (x in [0,1] NCHW, labels or None).

    images: uint8 (N, 32, 32, 3) HWC (numpy or tensor); labels: (N,) integers or None.
    """

    def __init__(self, images, labels, batch_size: int, device, channels_last: bool = False):
        self.images = torch.as_tensor(np.ascontiguousarray(images)).to(device)
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        self.batch_size, self.size = batch_size, len(self.images)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @property
    def batches(self) -> int:
        return -(-self.size // self.batch_size)

    def batch(self, index: int):
        lo, hi = index * self.batch_size, min((index + 1) * self.batch_size, self.size)
        x = self.images[lo:hi].permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=self.memory_format)
        return x, (None if self.labels is None else self.labels[lo:hi])

    def first(self, n: int) -> "BatchSource":
        """The first n samples, in the same batches (the last one cut)."""
        head = copy.copy(self)
        head.size = min(n, self.size)
        return head


def batch_source(images, labels, batch_size: int, device, channels_last: bool = False,
                 limit: int | None = None) -> BatchSource:
    """A BatchSource of the first `limit` (0 or None: all) images of an array or a data-module image source."""
    n = min(limit, len(images)) if limit else len(images)
    if hasattr(images, "read"):  # an ImageSource reads rows on demand: only these n are read
        first = images.read(np.arange(n, dtype=np.int64))
    else:
        first = images[:n]
    return BatchSource(first, None if labels is None else labels[:n], batch_size, device, channels_last)


def format_table(results: dict) -> str:
    """The results as aligned text rows: metric, value."""
    rows = [("clean accuracy", f"{100 * results['clean_accuracy']:.2f} %  ({results['samples']} images)")]
    robust = results.get("robust")
    if robust:
        where = f"L2 eps {robust['eps']}, {robust['samples']} images"
        for name in (*ROBUST_ATTACKS, "autoattack"):
            if name in robust:
                steps = "" if name == "autoattack" else f", {robust['steps']} steps"
                rows.append((f"robust accuracy, {name}", f"{100 * robust[name]:.2f} %  ({where}{steps})"))
        rows.append(("robust accuracy, all attacks", f"{100 * robust['all']:.2f} %"))
    rows.append(("mean max confidence, in-dist", f"{results['mean_max_conf_in']:.4f}"))
    for name, m in results.get("ood", {}).items():
        rows.append((f"OOD {name}: AUROC", f"{100 * m['auroc']:.2f} %  ({m['samples']} images)"))
        rows.append((f"OOD {name}: FPR at 95% TPR", f"{100 * m['fpr95']:.2f} %"))
        rows.append((f"OOD {name}: mean max confidence", f"{m['mean_max_conf']:.4f}"))
        if "worst_case_auroc" in m:
            how = f"(L2 eps {m['worst_case_eps']}, {m['worst_case_steps']} steps)"
            rows.append((f"OOD {name}: worst-case AUROC", f"{100 * m['worst_case_auroc']:.2f} %  {how}"))
            rows.append((f"OOD {name}: worst-case mean max conf", f"{m['worst_case_mean_max_conf']:.4f}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
