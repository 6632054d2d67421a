"""The `eval`, `counterfactuals` and `export` subcommands: what users do with a trained checkpoint.

Each `add_*` adds one subparser to the CLI and sets its `run` function; torch and the data
stack are imported only when a command runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..training.checkpoint import BEST, CHECKPOINT
from .parser import HelpFormatter, add_settings, config_from_args, setting_groups
from ..choices import EVAL_ATTACKS, NORMS, WEIGHTS
from ..config import OPTIONS, CounterfactualsConfig, EvalConfig, ExportConfig
from ..datasets import get_dataset
from ..errors import UserError
from ..files import atomic_write, atomic_write_safetensors, atomic_write_text, make_directory
from ..ops import require_backend

EVAL_STATE = "eval_state.pt"
EVAL_RESULTS = "eval.json"


def _checkpoint_command(sub, name: str, config_class, help: str, out_help: str, run, interrupted: str,
                        takes_exports: bool = False) -> None:
    """A subcommand that takes a checkpoint (with `takes_exports`, also what `export` wrote): its
    positional argument, --out, and the flags of `config_class`'s settings (config.py) in their
    groups; `run(args)` runs it."""
    p = sub.add_parser(name, formatter_class=HelpFormatter, help=help)
    exports = "; or what `ratio-fast export` wrote (its folder, model.pt or model.safetensors)" if takes_exports else ""
    p.add_argument("checkpoint", help=f"a ratio-fast checkpoint file, or a run directory: its {BEST} "
                                      f"(the authors' choice of weights), else its {CHECKPOINT}{exports}")
    add_settings(p, config_class, OPTIONS, only=("weights",))
    p.add_argument("--out", default=None, help=out_help)
    add_settings(p, config_class, OPTIONS, skip=("weights",))
    for group in setting_groups(config_class):
        if group != OPTIONS:
            add_settings(p, config_class, group)
    p.set_defaults(run=run, interrupted=interrupted)


def add_eval(sub) -> None:
    _checkpoint_command(sub, "eval", EvalConfig,
                        "clean and robust accuracy, OOD detection (clean and worst case) of a checkpoint",
                        "results folder (default: <checkpoint folder>/eval); re-running with the same --out resumes",
                        _run_eval, "interrupted; nothing was evaluated yet", takes_exports=True)


def add_counterfactuals(sub) -> None:
    _checkpoint_command(sub, "counterfactuals", CounterfactualsConfig,
                        "targeted attacks at growing radii, shown as a PNG grid: what makes an image class T",
                        "output folder (default: <checkpoint folder>/counterfactuals)", _run_counterfactuals,
                        "interrupted; nothing was written", takes_exports=True)


def add_export(sub) -> None:
    _checkpoint_command(sub, "export", ExportConfig,
                        "write model.pt (plain state_dict, RobustBench names) and model.safetensors",
                        "output folder (default: <checkpoint folder>/export)", _run_export,
                        "interrupted; nothing was written")


def _run_eval(args) -> int:
    from ..evaluation.evaluate import EvalState, batch_source, evaluate_model, format_table
    from ..evaluation.ood_sets import choose_ood_sets, load_ood_set, training_out_distribution

    settings = config_from_args(EvalConfig, args).quickened(getattr(args, "given", ()))
    model, config, device, channels_last, args.checkpoint = _load(args.checkpoint, settings)
    settings = settings.for_run(config)
    classes = get_dataset(config.dataset).num_classes
    if any(EVAL_ATTACKS[name].targeted for name in settings.attacks) and settings.targets > classes - 1:
        raise UserError(f"--targets {settings.targets}: a model of {classes} classes has {classes - 1} other "
                        f"classes to target; use --targets {classes - 1} or fewer")
    data_dir = settings.data_dir or config.data_dir
    test = _test_split(config, data_dir)
    source = dict(batch_size=settings.batch_size, device=device, channels_last=channels_last)
    test_set = batch_source(test.images, test.labels, limit=settings.samples, **source)
    requested = list(settings.ood) if settings.ood is not None else None
    ood_specs, notes = choose_ood_sets(requested, config.dataset, training_out_distribution(config))
    for line in notes:
        print(line, file=sys.stderr)
    ood_sets = {spec: batch_source(load_ood_set(spec, dataset=config.dataset, test_images=test.images,
                                                data_dir=data_dir, samples=settings.ood_samples, seed=config.seed,
                                                skip_bad_images=settings.skip_bad_images),
                                   None, limit=settings.ood_samples, **source)
                for spec in ood_specs}

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    make_directory(out)
    state = EvalState(out / EVAL_STATE, _identity(args.checkpoint, settings, data_dir))
    args.interrupted = (f"interrupted; the batches evaluated so far are kept in {out / EVAL_STATE}: the same "
                        "command continues from there")
    evaluated = describe_weights(args.checkpoint, settings.weights)
    print(f"evaluating {config.arch}, {evaluated}, on {device} -> {out}", flush=True)
    scores = {}
    results = evaluate_model(model, test_set, ood_sets, settings, state, test_images=len(test), scores=scores)
    results = {"checkpoint": str(args.checkpoint), "weights": settings.weights, "evaluated": evaluated,
               "arch": config.arch, "dataset": config.dataset, **results}
    atomic_write_text(out / EVAL_RESULTS, json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"results: {out / EVAL_RESULTS}")
    _draw_ood(scores, out)
    _draw_radius_curve(results, out)
    return 0


def _draw_radius_curve(results: dict, out: Path) -> None:
    """robust_vs_radius.png beside eval.json when eval measured several radii."""
    from .. import plots

    if "robust_curve" in results:
        _draw(plots.RADIUS_CURVE, "robust accuracy against the radius", out,
              lambda path: plots.radius_curve(results["robust_curve"], results["clean_accuracy"], path))


def _draw_ood(scores: dict, out: Path) -> None:
    """ood.png beside eval.json when eval scored OOD sets."""
    from .. import plots

    sets = {name: {kind: None if t is None else t.numpy() for kind, t in value.items()}
            for name, value in scores.items() if name != "in"}
    if sets:
        _draw(plots.OOD_PICTURE, "ROC curves and confidence histograms", out,
              lambda path: plots.ood_pictures(scores["in"].numpy(), sets, path))


def _draw(picture: str, what: str, out: Path, draw) -> None:
    """draw(out / picture) and say where `what` is, or the line that says why it is not drawn."""
    from .. import plots

    why_not = plots.missing(picture)
    if why_not:
        print(why_not, file=sys.stderr)
        return
    draw(out / picture)
    print(f"{what}: {out / picture}")


def describe_weights(path: str | Path, weights: str) -> str:
    """Which weights are evaluated: file, EMA or raw model, and the training progress they come from."""
    from ..evaluation.load import export_files
    from ..training.checkpoint import load_checkpoint

    if export_files(path) is not None:
        return f"{path}: the weights `ratio-fast export` wrote"
    state = load_checkpoint(path)
    kind = WEIGHTS[weights].title
    best, step = state.get("best"), state["trainer"].get("steps_done")
    if isinstance(best, dict) and best.get("step") == step:  # best.pt (or a last checkpoint that was the best)
        return (f"{path}: {kind}, epoch {best['epoch']} of {state['config'].get('epochs')} "
                f"(best clean test accuracy of the EMA, {100 * best['test_clean_acc']:.2f} %)")
    return f"{path}: {kind}, after step {step} (the last checkpoint)"


def _run_counterfactuals(args) -> int:
    import torch

    from ..evaluation.counterfactuals import (choose_targets, counterfactuals, prediction, save_grid,
                                              target_probability)
    from ..evaluation.evaluate import batch_source

    settings = config_from_args(CounterfactualsConfig, args)
    model, config, device, _, args.checkpoint = _load(args.checkpoint, settings)
    settings = settings.for_run(config)
    test = _test_split(config, settings.data_dir or config.data_dir)
    indices, radii = list(settings.images), list(settings.radii)
    bad = [i for i in indices if not 0 <= i < len(test)]
    if bad:
        raise UserError(f"--images: index {bad[0]} is outside the test set (0..{len(test) - 1})")
    settings.check_target(test.num_classes)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "counterfactuals"
    make_directory(out)  # before the attacks: a bad --out costs nothing

    # The chosen images as the model takes them (NCHW in [0, 1]), by the loader of the evaluation.
    x, labels = batch_source(test.images[indices], test.labels[indices], len(indices), device).batch(0, 0)
    targets = choose_targets(model, x, labels, settings.target)
    adv, conf = counterfactuals(model, x, targets, radii, steps=settings.steps, backend=settings.backend,
                                batch_size=settings.batch_size, start=settings.start, seed=settings.seed,
                                norm=settings.norm)
    original_conf = target_probability(model, x, targets)
    predicted, predicted_conf = prediction(model, torch.cat([x[:, None], adv], 1))  # (N, R + 1), the original first

    atomic_write(out / "counterfactuals.png", lambda tmp: save_grid(
        tmp, x, adv, conf, original_conf, radii, labels, targets, predicted, predicted_conf,
        class_names=get_dataset(config.dataset).class_names, differences=settings.differences, norm=settings.norm))
    tensors = dict(original=x, counterfactuals=adv, target_confidence=conf, original_target_confidence=original_conf,
                   predicted=predicted, predicted_confidence=predicted_conf, radii=torch.tensor(radii),
                   labels=labels, targets=targets, indices=torch.tensor(indices))
    atomic_write_safetensors(out / "counterfactuals.safetensors",
                             {name: t.detach().cpu().contiguous() for name, t in tensors.items()})
    print(f"counterfactuals of {len(indices)} images at {NORMS[settings.norm].title} radii "
          f"{', '.join(f'{r:g}' for r in radii)} "
          f"({settings.steps} steps): {out / 'counterfactuals.png'}, {out / 'counterfactuals.safetensors'}")
    return 0


def _run_export(args) -> int:
    from safetensors import safe_open

    from ..evaluation.export import export_checkpoint
    from ..evaluation.load import resolve_checkpoint

    settings = config_from_args(ExportConfig, args)
    args.checkpoint = str(resolve_checkpoint(args.checkpoint))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "export"
    pt_path, st_path = export_checkpoint(args.checkpoint, out, settings.weights)
    with safe_open(st_path, "pt") as exported:
        trained_in = exported.metadata()
    print(f"exported {settings.weights} weights (trained in threat model {trained_in['threat_model']}, eps "
          f"{float(trained_in['eps']):.4g}): {pt_path}, {st_path}")
    return 0


def _load(checkpoint: str, settings):
    """(model on its device in eval mode, the run's TrainConfig, device, channels_last, the file read:
    a run directory's checkpoint, an export's model.safetensors) for a command's settings (their
    weights and device)."""
    import torch

    from ..evaluation.load import load_model
    from ..training.distributed import resolve_device
    from ..training.speed import wants_channels_last

    device = resolve_device(settings.device)
    require_backend(settings.backend, device)
    model, config, path = load_model(checkpoint, settings.weights)
    channels_last = wants_channels_last(config, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model, config, device, channels_last, str(path)


def _test_split(config, data_dir):
    from ..data import load_in_distribution

    return load_in_distribution(config.dataset, data_dir, train=False, seed=config.seed)


def _identity(checkpoint: str, settings, data_dir) -> dict:
    """What must not change between a run and its resumption: the weights (the checkpoint's file and
    content: its SHA-256, or for a file written before checksums its size and time), data,
    batching, seed."""
    from ..digest import verify

    path = Path(checkpoint)
    stat = path.stat()
    content = verify(path) or f"{stat.st_size} bytes, modified {stat.st_mtime_ns}"
    return {"checkpoint": str(path.resolve()), "content": content, "weights": settings.weights,
            "data_dir": str(data_dir), "batch_size": settings.batch_size, "seed": settings.seed}
