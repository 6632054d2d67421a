"""Evaluation of a trained model: clean and robust accuracy, OOD detection (clean and worst case).

`clean_accuracy` / `robust_accuracy` are the quick per-epoch numbers of a training run.
`evaluate_model` is the full evaluation behind `ratio-fast eval`, with AutoAttack's definitions:
- robust accuracy: a test point stays robust while no iterate of any attack so far was
  misclassified (AutoAttack's `x_best_adv` criterion). The attacks run in order, each only on
  the points still robust, so the evaluation gets cheaper as it goes: APGD-CE, then APGD-T with
  its 9 targets as one batch of (image, target) rows. `--autoattack` also runs AutoAttack
  itself (autoattack_package.py) on the same points, apart from ours;
- OOD: the max-confidence scores of the clean in-distribution test points against those of
  each out-distribution set, clean and under the worst-case attack (APGD maximizing the max
  log-confidence in an L2 ball; its highest-loss iterate counts).
It is cut into parts (clean, each attack, each out-distribution set), each part into batches,
and every finished batch's per-sample results go into an `EvalState` file (checksummed like a
checkpoint), so a killed run continues where it stopped, a re-run with more parts computes only
the new ones, and an evaluation of other weights (the run trained further) starts over in it. Attacks
draw their random starts from a generator seeded by (seed, part, batch): resumed and
uninterrupted runs give the same numbers. On CUDA, attack calls are replayed from CUDA graphs
at a fixed number of rows (`AttackCalls`), like the training attacks.
"""
from __future__ import annotations

import math
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..attacks.apgd import APGDTargeted, apgd_run, random_start_point
from ..attacks.cuda_graph import GraphedCall
from ..choices import ATTACKS, DEFAULT_NORM, EVAL_ATTACKS, NORMS, check_builders
from ..config import EvalConfig
from ..data.batches import BatchSpec, Loader
from ..data.resident import ResidentLoader
from ..digest import DamagedFile, load_torch
from ..errors import Note, UserError
from ..files import atomic_save
from ..models import eval_mode
from .ood import max_confidence, ood_metrics
from ..ops import sample_layout
from ..progress import Progress

Z_95 = 1.959963984540054  # the standard normal quantile of a two-sided 95 % interval


@torch.no_grad()
def clean_accuracy(model: torch.nn.Module, batches) -> float:
    """Fraction of correct top-1 predictions over an iterable of (x, y) batches, model in eval mode."""
    correct = total = 0
    with eval_mode(model):
        for x, y in batches:
            correct = correct + (model(x).argmax(1) == y).sum()
            total += y.shape[0]
    return float(correct) / max(total, 1)


def robust_accuracy(model: torch.nn.Module, batches, attack: Callable) -> float:
    """Fraction still classified correctly after `attack` (an upper bound on the true robust accuracy).

    `attack` is any object called as attack(model, x, y) -> x_adv: PGD, APGD, APGDTargeted.
    """
    correct = total = 0
    with eval_mode(model):
        for x, y in batches:
            x_adv = attack(model, x, y)
            with torch.no_grad():
                correct = correct + (model(x_adv).argmax(1) == y).sum()
            total += y.shape[0]
    return float(correct) / max(total, 1)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); sound near 0 and 1 too."""
    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}")
    p = successes / trials
    centre = p + z * z / (2 * trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    scale = 1 + z * z / trials
    return max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


class EvalState:
    """Per-batch results of an evaluation, kept in one file rewritten atomically.

    `identity` says what is evaluated (the checkpoint and its content, weights, batch size,
    seed: whatever changes the per-batch results without changing the part names). The results
    of another identity, or of a damaged file, are never mixed in: they are replaced (at the
    first save), with a Note that says why.
    """

    def __init__(self, path: str | Path | None, identity: dict, save_interval: float = 5.0):
        """path None: kept in memory only (rf.evaluate)."""
        self.path, self.identity, self.save_interval = path and Path(path), identity, save_interval
        self.parts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        if self.path is not None and self.path.exists():
            try:
                saved = load_torch(self.path)
            except DamagedFile as damaged:  # results that cannot be trusted are computed again
                warnings.warn(Note(f"evaluation state {damaged}; its results are not used, this evaluation "
                                   "replaces it"), stacklevel=2)
                saved = {"identity": identity, "parts": {}}
            except Exception as e:  # any unreadable file: the message tells the user what to do
                raise UserError(f"evaluation state {self.path}: unreadable ({e}); remove it to evaluate "
                                "from the start") from None
            if not isinstance(saved, dict) or "parts" not in saved:
                raise UserError(f"evaluation state {self.path}: not a ratio-fast evaluation state; remove it "
                                "to evaluate from the start")
            if saved.get("identity") == identity:
                self.parts = saved["parts"]
            else:
                warnings.warn(Note(f"{self.path} held the evaluation of {_changes(saved.get('identity'), identity)}; "
                                   "this evaluation replaces it"), stacklevel=2)
        self._last_save = time.perf_counter()

    def done(self, part: str, batch: int) -> bool:
        return batch in self.parts.get(part, {})

    def put(self, part: str, batch: int, result: dict[str, torch.Tensor]) -> None:
        self.parts.setdefault(part, {})[batch] = {k: v.detach().cpu() for k, v in result.items()}
        if time.perf_counter() - self._last_save >= self.save_interval:
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        atomic_save(self.path, {"what": "ratio-fast evaluation state", "identity": self.identity,
                                "parts": self.parts})
        self._last_save = time.perf_counter()

    def collect(self, part: str, batches: int) -> dict[str, torch.Tensor]:
        """The part's results over batches 0..batches-1, concatenated per key."""
        stored = self.parts[part]
        return {key: torch.cat([stored[b][key] for b in range(batches)]) for key in stored[0]}


def _changes(old, new: dict) -> str:
    """What an earlier evaluation evaluated differently, in words: 'other weights (the content of
    runs/a/best.pt changed)', 'another --batch-size (64, now 32)'."""
    if not isinstance(old, dict):
        return "something else"
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if "content" in changed:
        return f"other weights (the content of {new.get('checkpoint')} changed)"
    return ", ".join(f"another {key.replace('_', '-') if key != 'checkpoint' else 'checkpoint'} "
                     f"({old.get(key)}, now {new.get(key)})" for key in changed)


# measure(x, y, generator, rows) -> dict of per-sample tensors; rows: the batch's sample indices.
Measure = Callable[[torch.Tensor, torch.Tensor | None, torch.Generator, slice], dict]


def run_part(state: EvalState, part: str, source: Loader, measure: Measure, seed: int,
             progress: Progress | None = None, cost: int = 1) -> dict:
    """Measure every batch of a part not yet in `state`, saving as it goes; return all its results.

    The generator handed to `measure` is seeded by (seed, part, batch), so a batch gives the
    same result whenever it is computed. progress: the whole evaluation's, advanced by `cost`
    per batch (a batch done before counts as done); None: one of the part's own.
    """
    todo = [b for b in range(len(source)) if not state.done(part, b)]
    if progress is not None:
        progress.skip(cost * (len(source) - len(todo)))
    if todo:
        own = progress is None
        progress = Progress(len(todo), desc=part) if own else progress
        try:
            for b in todo:
                x, y = source.batch(0, b)
                generator = torch.Generator(device=x.device).manual_seed(_batch_seed(seed, part, b))
                rows = slice(b * source.spec.batch_size, b * source.spec.batch_size + x.shape[0])
                state.put(part, b, measure(x, y, generator, rows))
                progress.update(cost if not own else 1, None if own else part)
        except KeyboardInterrupt:  # Ctrl-C: keep every batch finished so far
            state.save()
            raise
        if own:
            progress.close()
        state.save()
    return state.collect(part, len(source))


# The work of one batch of each part, in clean forwards (an attack step is a forward and a backward:
# about 3), for the whole evaluation's ETA. Robust parts attack only the points still robust, so the
# ETA starts high and comes down. AutoAttack's standard version: APGD-CE, APGD-T and FAB-T (about
# APGD-T's work) and Square (5000 forward queries).
ATTACK_STEP_COST = 3
SQUARE_QUERIES = 5000


def _costs(s: EvalConfig) -> dict[str, int]:
    """The work of one batch of each part: "clean", each eval attack (a targeted one per target
    class), "autoattack", "worst-case ood"."""
    attacks = {name: ATTACK_STEP_COST * s.steps * (s.targets if row.targeted else 1)
               for name, row in EVAL_ATTACKS.items()}
    return {"clean": 1, **attacks, "autoattack": ATTACK_STEP_COST * s.steps * (1 + 2 * s.targets) + SQUARE_QUERIES,
            "worst-case ood": ATTACK_STEP_COST * s.ood_steps}


def _total_work(s: EvalConfig, test: Loader, ood_sets: dict[str, Loader]) -> int:
    costs = _costs(s)
    total = len(test) * costs["clean"]
    robust_batches = len(test.first(s.robust_samples)) if s.robust_samples else len(test)
    if s.eps > 0 and (s.attacks or s.autoattack):
        total += robust_batches * sum(costs[a] for a in (*s.attacks, *(("autoattack",) if s.autoattack else ())))
    total += robust_batches * len(_curve_radii(s)) * sum(costs[a] for a in s.attacks)
    worst = costs["worst-case ood"] if s.ood_steps > 0 and s.ood_eps > 0 else 0
    return total + sum(len(source) * (costs["clean"] + worst) for source in ood_sets.values())


def _batch_seed(seed: int, part: str, batch: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(part.encode()) * 10_007 + batch) % (2**63)


class AttackCalls:
    """Runs an attack function of row tensors in calls of at most `rows` rows.

    fn(*row_tensors) returns a NamedTuple of per-row tensors or None (apgd.APGDResult). Eager
    (CPU, or graphs off): the rows go in pieces of `rows`. With graphs (CUDA): every piece is
    padded to exactly `rows` rows by repeating its first row (the padding's results are
    dropped), so one CUDA graph per call site, captured on first use, serves every call, as
    for the training attacks (cuda_graph.GraphedCall).
    """

    def __init__(self, rows: int, graphs: bool):
        self.rows, self.graphs = rows, graphs
        self._graphed: dict[str, GraphedCall] = {}

    def __call__(self, site: str, fn: Callable, *inputs: torch.Tensor):
        pieces = [self._piece(site, fn, [t[lo:lo + self.rows] for t in inputs])
                  for lo in range(0, inputs[0].shape[0], self.rows)]
        if len(pieces) == 1:
            return pieces[0]
        return type(pieces[0])(*(None if field is None else torch.cat([p[i] for p in pieces])
                                 for i, field in enumerate(pieces[0])))

    def _piece(self, site: str, fn: Callable, inputs: list[torch.Tensor]):
        if not self.graphs:
            return fn(*inputs)
        n = inputs[0].shape[0]
        graphed = self._graphed.setdefault(site, GraphedCall(fn))
        out = graphed(*(_pad_rows(t, self.rows) for t in inputs))
        return type(out)(*(None if o is None else o[:n].clone() for o in out))  # the next replay overwrites out


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    padded = torch.cat([t, t[:1].expand(rows - t.shape[0], *t.shape[1:])])
    return padded.contiguous(memory_format=sample_layout(t)) if t.dim() == 4 else padded


def evaluate_model(model: torch.nn.Module, test: Loader, ood_sets: dict[str, Loader],
                   settings: EvalConfig, state: EvalState, test_images: int | None = None,
                   scores: dict | None = None) -> dict:
    """Every metric of `settings` on `test` (labelled) and the unlabelled `ood_sets`; a JSON-ready dict.

    test_images: the size of the whole test split `test` is taken from (default: test.num_samples), so
    that accuracies on fewer images get a confidence interval. OOD sets are scored against the
    clean in-distribution scores of all of `test`. scores: filled with the max confidences behind
    the OOD metrics, {"in": test's, name: {"clean": ..., "worst": ...}} (for the pictures).
    """
    s = settings.for_run()  # the threat model filled in where the caller has not (cli: from the run)
    title = NORMS[s.norm].title
    seed = s.seed
    device = next(model.parameters()).device
    graphs = device.type == "cuda" if s.cuda_graphs is None else s.cuda_graphs
    if graphs and device.type != "cuda":
        raise UserError(f"--cuda-graphs needs a CUDA device (this evaluation is on {device})")
    calls = AttackCalls(s.batch_size, graphs)

    def clean(x, y, _generator, _rows):
        logits = _no_grad(model, x)
        return {"correct": logits.argmax(1) == y, "conf": max_confidence(logits)}

    def ood_clean(x, _y, _generator, _rows):
        return {"conf": max_confidence(_no_grad(model, x))}

    def robust_after_each_attack(s_at: EvalConfig, calls_at: AttackCalls):
        """(attack, points still robust after it and those before) for s_at's attacks at s_at.eps."""
        still_robust = clean_part["correct"][:n]
        for k, name in enumerate(s_at.attacks):
            part = _robust_part_name(s_at.attacks[:k + 1], s_at, n)
            measure = _surviving(still_robust, _fooled_by(name, model, s_at, calls_at))
            still_robust = run_part(state, part, robust_set, measure, seed, progress, costs[name])["robust"]
            yield name, still_robust

    def worst_case_rows(x, start):
        return apgd_run(model, x, None, eps=s.ood_eps, steps=s.ood_steps, objective="max_conf", start=start,
                        backend=s.backend, check_inputs=False, norm=s.norm)  # loader images: in [0,1], and maybe graphed

    def ood_worst(x, _y, generator, _rows):
        start = random_start_point(x, s.ood_eps, generator, s.backend, s.norm)
        worst = calls("worst-case ood", worst_case_rows, x, start).best
        return {"conf": max_confidence(_no_grad(model, worst))}

    costs = _costs(s)
    progress = Progress(_total_work(s, test, ood_sets), desc="evaluation", unit="work")  # work: see _costs
    with eval_mode(model):
        results: dict = {"samples": test.num_samples, "test_images": test_images or test.num_samples}
        clean_part = run_part(state, f"clean, {test.num_samples} images", test, clean, seed, progress, costs["clean"])
        results["clean_accuracy"] = float(clean_part["correct"].double().mean())
        results["mean_max_conf_in"] = float(clean_part["conf"].double().mean())

        robust_set = test.first(s.robust_samples) if s.robust_samples else test
        n = robust_set.num_samples
        if s.eps > 0 and (s.attacks or s.autoattack):
            robust = {"norm": s.norm, "eps": s.eps, "steps": s.steps, "targets": s.targets, "samples": n, "attacks": list(s.attacks)}
            still_robust = clean_part["correct"][:n]
            for name, still_robust in robust_after_each_attack(s, calls):
                robust[name] = float(still_robust.double().mean())  # after this attack and those before
            if s.autoattack:
                from .autoattack_package import AutoAttackPackage

                reference = AutoAttackPackage(s.eps, norm=s.norm)

                def autoattack(x, y, generator, _rows):
                    return {"robust": reference.robust(model, x, y, seed=generator.initial_seed() % 2**31)}

                part = f"{reference.description}, {title} {s.eps:g}, {n} images"
                reference_robust = run_part(state, part, robust_set, autoattack, seed, progress,
                                            costs["autoattack"])["robust"]
                robust["autoattack"] = float(reference_robust.double().mean())
                robust["autoattack_version"] = reference.description
                still_robust = still_robust & reference_robust
            robust["all"] = float(still_robust.double().mean())  # robust against every attack run
            results["robust"] = robust
        if _curve_radii(s):
            curve = {s.eps: robust[s.attacks[-1]]} if s.eps > 0 and s.attacks else {}
            for radius in _curve_radii(s):  # each radius its own AttackCalls: its CUDA graphs hold its eps
                after = list(robust_after_each_attack(replace(s, eps=radius), AttackCalls(s.batch_size, graphs)))
                curve[radius] = float(after[-1][1].double().mean())
            results["robust_curve"] = {"norm": s.norm, "attacks": list(s.attacks), "samples": n,
                                       "points": [[eps, curve[eps]] for eps in sorted(curve)]}

        results["ood"] = {}
        for name, source in ood_sets.items():
            conf = run_part(state, f"ood {name}, clean, {source.num_samples} images", source, ood_clean, seed,
                            progress, costs["clean"])["conf"]
            metrics = ood_metrics(clean_part["conf"], conf)
            worst = None
            if s.ood_steps > 0 and s.ood_eps > 0:
                part = f"ood {name}, worst case {title} {s.ood_eps:g}, {s.ood_steps} steps, {source.num_samples} images"
                worst = run_part(state, part, source, ood_worst, seed, progress, costs["worst-case ood"])["conf"]
                metrics.update({f"worst_case_{k}": v for k, v in ood_metrics(clean_part["conf"], worst).items()})
                metrics.update(worst_case_norm=s.norm, worst_case_eps=s.ood_eps, worst_case_steps=s.ood_steps)
            metrics["samples"] = source.num_samples
            results["ood"][name] = metrics
            if scores is not None:
                scores.update({"in": clean_part["conf"], name: {"clean": conf, "worst": worst}})
    progress.close()
    results["settings"] = {**asdict(s), "attacks": list(s.attacks)}
    return results


def _curve_radii(s: EvalConfig) -> list[float]:
    """The radii of --radii besides --eps's, where there are attacks to run."""
    return sorted(set(s.radii) - {s.eps}) if s.attacks else []


def _robust_part_name(attacks: tuple[str, ...], s: EvalConfig, samples: int) -> str:
    """A part's results depend on the attacks before it (it attacks only what they left robust)."""
    targets = f", {s.targets} targets" if any(ATTACKS[name].targeted for name in attacks) else ""
    return (f"robust after {' + '.join(attacks)}, {NORMS[s.norm].title} {s.eps:g}, {s.steps} steps{targets}, "
            f"{samples} images")


def _surviving(still_robust: torch.Tensor, fooled_by: Callable) -> Measure:
    """The measure of one attack of the sequence: it attacks the batch's points still robust."""
    def measure(x, y, generator, rows):
        robust = still_robust[rows].to(x.device, copy=True)
        todo = robust.nonzero().squeeze(1)  # syncs once per batch, outside the attack loop
        if todo.numel():
            robust[todo] = ~fooled_by(x[todo], y[todo], generator)
        return {"robust": robust}
    return measure


def _untargeted_apgd(name: str, model, s: EvalConfig, calls: AttackCalls) -> Callable:
    """APGD on cross-entropy: fooled_by(x, y, generator) -> (N,) bool, AutoAttack's success on each point."""
    def rows(x, y, start):
        return apgd_run(model, x, y, eps=s.eps, steps=s.steps, objective="ce", start=start,
                        count_misclassified=True, backend=s.backend, check_inputs=False, norm=s.norm)

    def fooled_by(x, y, generator):
        return calls(name, rows, x, y, random_start_point(x, s.eps, generator, s.backend, s.norm)).fooled
    return fooled_by


def _targeted_apgd(name: str, model, s: EvalConfig, calls: AttackCalls) -> Callable:
    """APGD on the targeted DLR loss, --targets classes per point as one batch of (image, target) rows."""
    attack = APGDTargeted(s.eps, s.steps, targets=s.targets, backend=s.backend, check_inputs=False, norm=s.norm)
    target_rows = attack.attack_rows(model)

    def fooled_by(x, y, generator):
        return attack.run(model, x, y, generator, attack_rows=lambda *r: calls(name, target_rows, *r)).fooled
    return fooled_by


# eval --attacks (choices.EVAL_ATTACKS): name -> builder(name, model, settings, calls) -> fooled_by.
BUILDERS: dict[str, Callable[..., Callable]] = {"apgd-ce": _untargeted_apgd, "apgd-t": _targeted_apgd}
check_builders(BUILDERS, EVAL_ATTACKS, __name__)


def _fooled_by(name: str, model, s: EvalConfig, calls: AttackCalls) -> Callable:
    """fooled_by(x, y, generator) -> (N,) bool: AutoAttack's success of attack `name` on each point."""
    return BUILDERS[name](name, model, s, calls)


def _no_grad(model, x):
    with torch.no_grad():
        return model(x)


def batch_source(images, labels, batch_size: int, device, channels_last: bool = False,
                 limit: int | None = None) -> ResidentLoader:
    """The first `limit` (0 or None: all) images of an array or a data-module image source, on the
    device, in order and as they are (the data package's evaluation loader): `len(source)` batches,
    `source.batch(0, i)` -> (x in [0,1] NCHW, labels or None), `source.first(n)`."""
    n = min(limit, len(images)) if limit else len(images)
    if hasattr(images, "read"):  # an ImageSource reads rows on demand: only these n are read
        first = images.read(np.arange(n, dtype=np.int64))
    else:
        first = images[:n]
    return ResidentLoader(first, None if labels is None else labels[:n], BatchSpec.in_order(batch_size, channels_last),
                          device)


class TensorBatches(Loader):
    """In-order batches of float (N, C, H, W) images in [0, 1] already in memory, moved to `device`
    batch by batch (rf.evaluate's input)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int, device):
        super().__init__(images.shape[0], labels, BatchSpec.in_order(batch_size), device, images.shape[-2:])
        self.images, self.labels = images, labels

    def first(self, n: int) -> "TensorBatches":
        return TensorBatches(self.images[:n], None if self.labels is None else self.labels[:n],
                             self.spec.batch_size, self.device)

    def _make_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = slice(index * self.spec.batch_size, (index + 1) * self.spec.batch_size)
        x = self.images[rows].to(self.device, torch.float32).contiguous()  # as batch_source's: the same numbers
        return x, None if self.labels is None else self.labels[rows].to(self.device, torch.int64)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             ood: dict[str, torch.Tensor] | None = None, **settings) -> dict:
    """`ratio-fast eval`'s protocol on any classifier of [0, 1] images: clean and robust accuracy on
    (x, y) (float (N, C, H, W) in [0, 1], labels (N,)), OOD detection against each set of `ood`
    ({name: images}). `settings` are EvalConfig's fields, `ratio-fast eval`'s flags (eps=0.5,
    attacks=("apgd-ce", "apgd-t"), steps=100, targets=9, ood_eps=1.0, ood_steps=100, batch_size=256,
    seed=0, quick=True, ...; the run's settings, weights and data are the caller's); returns the dict
    `ratio-fast eval` writes to eval.json. Runs on the model's device; nothing is written."""
    s = EvalConfig(**settings).quickened(settings)
    if x.dim() != 4 or tuple(y.shape) != (x.shape[0],):
        raise UserError(f"evaluate: x must be (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    device = next(model.parameters()).device
    with torch.no_grad(), eval_mode(model):
        classes = model(x[:1].to(device, torch.float32)).shape[1]
    if any(EVAL_ATTACKS[name].targeted for name in s.attacks) and s.targets > classes - 1:
        raise UserError(f"evaluate: targets={s.targets}, but a model of {classes} classes has {classes - 1} "
                        "other classes to target")
    test = TensorBatches(x, y, s.batch_size, device)
    ood_sets = {name: TensorBatches(images, None, s.batch_size, device) for name, images in (ood or {}).items()}
    return evaluate_model(model, test, ood_sets, s, EvalState(None, {}))


def format_table(results: dict) -> str:
    """The results as aligned text rows: metric, value. Accuracies on part of the test set get a 95 % CI."""
    population = results.get("test_images", results["samples"])
    rows = []
    if "evaluated" in results:
        rows.append(("weights", results["evaluated"]))
    rows.append(("clean accuracy", _accuracy(results["clean_accuracy"], results["samples"], population)))
    robust = results.get("robust")
    if robust:
        n = robust["samples"]
        title = NORMS[robust.get("norm", DEFAULT_NORM)].title  # results saved before --norm: L2
        done = []
        for name in robust.get("attacks", []):
            done.append(name)
            targeted = name in ATTACKS and ATTACKS[name].targeted
            steps = f", {robust['steps']} steps" + (f", {robust['targets']} targets" if targeted else "")
            where = f"({title} {robust['eps']:g}{steps})"
            rows.append((f"robust accuracy, {' + '.join(done)}", f"{_accuracy(robust[name], n, population)}  {where}"))
        if "autoattack" in robust:
            rows.append(("robust accuracy, AutoAttack", f"{_accuracy(robust['autoattack'], n, population)}  "
                                                        f"({robust['autoattack_version']}, {title} {robust['eps']:g})"))
        if len(robust.get("attacks", [])) + ("autoattack" in robust) > 1:
            rows.append(("robust accuracy, all attacks", _accuracy(robust["all"], n, population)))
    curve = results.get("robust_curve")
    if curve:
        title = NORMS[curve["norm"]].title
        for eps, accuracy in curve["points"]:
            rows.append((f"robust accuracy at {title} {eps:g}", f"{_accuracy(accuracy, curve['samples'], population)}  "
                                                             f"({' + '.join(curve['attacks'])})"))
    rows.append(("mean max confidence, in-dist", f"{results['mean_max_conf_in']:.4f}"))
    for name, m in results.get("ood", {}).items():
        rows.append((f"OOD {name}: AUROC", f"{100 * m['auroc']:.2f} %  ({m['samples']} images)"))
        rows.append((f"OOD {name}: FPR at 95% TPR", f"{100 * m['fpr95']:.2f} %"))
        rows.append((f"OOD {name}: mean max confidence", f"{m['mean_max_conf']:.4f}"))
        if "worst_case_auroc" in m:
            how = (f"({NORMS[m.get('worst_case_norm', DEFAULT_NORM)].title} {m['worst_case_eps']:g}, "
                   f"{m['worst_case_steps']} steps)")
            rows.append((f"OOD {name}: worst-case AUROC", f"{100 * m['worst_case_auroc']:.2f} %  {how}"))
            rows.append((f"OOD {name}: worst-case mean max conf", f"{m['worst_case_mean_max_conf']:.4f}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _accuracy(value: float, samples: int, population: int) -> str:
    """'76.20 %  (10000 images)', or with the 95 % interval when measured on `samples` < `population` images."""
    if samples >= population:
        return f"{100 * value:.2f} %  ({samples} images)"
    low, high = wilson_interval(round(value * samples), samples)
    return f"{100 * value:.2f} %  [{100 * low:.1f}, {100 * high:.1f}] 95 % CI  ({samples} of {population} images)"
