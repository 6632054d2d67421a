"""The `eval`, `counterfactuals` and `export` subcommands: what users do with a trained checkpoint.

Each `add_*` adds one subparser to the CLI and sets its `run` function; torch and the data
stack are imported only when a command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..training.checkpoint import BEST, CHECKPOINT, WEIGHTS
from .parser import HelpFormatter
from ..datasets import get_dataset
from ..errors import UserError
from ..files import atomic_write, atomic_write_safetensors, atomic_write_text, make_directory
from ..ops._common import BACKENDS
from ..choices import COUNTERFACTUAL_STARTS, COUNTERFACTUAL_TARGETS, choices_help
from ..validation import SEED_RANGE, check_number, lookup

FORMATTER = HelpFormatter
EVAL_STATE = "eval_state.pt"
EVAL_RESULTS = "eval.json"


def _common(p) -> None:
    p.add_argument("checkpoint", help=f"a ratio-fast checkpoint file, or a run directory: its {BEST} "
                                      f"(the authors' choice of weights), else its {CHECKPOINT}")
    p.add_argument("--weights", default="ema", choices=WEIGHTS, help="the EMA weights or the raw model's")


def _device_flags(p) -> None:
    p.add_argument("--data-dir", default=None, help="where the data sets are (default: the training run's --data-dir)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="fused attack step: auto (Triton on CUDA, torch on CPU), triton, native or torch")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", formatter_class=FORMATTER,
                       help="clean and robust accuracy, OOD detection (clean and worst case) of a checkpoint")
    _common(p)
    p.add_argument("--out", default=None, help="results folder (default: <checkpoint folder>/eval); "
                                               "re-running with the same --out resumes")
    _device_flags(p)
    g = p.add_argument_group("robust accuracy (L2)")
    g.add_argument("--eps", type=float, default=None, help="attack radius (default: the run's --eps-in)")
    g.add_argument("--attacks", default="apgd-ce,apgd-t",
                   help="comma list of apgd-ce (APGD on cross-entropy) and apgd-t (APGD, targeted DLR), or none")
    g.add_argument("--steps", type=int, default=100, help="APGD steps per attack (per target class for apgd-t)")
    g.add_argument("--targets", type=int, default=9, help="apgd-t target classes, most likely first (at most "
                                                         "the model's classes but one)")
    g.add_argument("--autoattack", action="store_true",
                   help='also AutoAttack\'s standard L2 version, run by its package (pip install "ratio-fast[eval]")')
    g.add_argument("--robust-samples", type=int, default=0,
                   help="first test images under attack (0: all, the authors' protocol; fewer get a 95%% CI)")
    g = p.add_argument_group("out-of-distribution detection (max softmax confidence)")
    g.add_argument("--ood", default=None,
                   help="comma list of out-distribution sets: uniform-noise, smooth-noise, permuted-pixels (built in), "
                        "cifar10, cifar100 (test splits), svhn (<data-dir>/test_32x32.mat) or a .mat path, synthetic, "
                        ".npy files, image directories; none to skip (default: the other CIFAR (synthetic for "
                        "synthetic runs) and the built-in sets, minus the run's training out-distribution)")
    g.add_argument("--ood-samples", type=int, default=1000, help="images per out-distribution set (0: all)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="leave out the images of --ood folders that cannot be decoded (counted in a note) "
                        "instead of stopping")
    g.add_argument("--ood-eps", type=float, default=1.0, help="radius of the worst-case attack (maximizes confidence)")
    g.add_argument("--ood-steps", type=int, default=100, help="APGD steps of the worst-case attack (0: skip it)")
    g = p.add_argument_group("run")
    g.add_argument("--samples", type=int, default=0, help="test images for clean accuracy and OOD (0: all)")
    g.add_argument("--batch-size", type=int, default=256, help="images per forward; attacks run in pieces of this size")
    g.add_argument("--seed", type=int, default=0, help="seeds the attacks' random starts (0 to 2**63-1)")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the attack calls from CUDA graphs (default: on for CUDA, off for CPU)")
    p.set_defaults(run=_run_eval, interrupted="interrupted; nothing was evaluated yet")


def add_counterfactuals(sub) -> None:
    p = sub.add_parser("counterfactuals", formatter_class=FORMATTER,
                       help="targeted attacks at growing radii, shown as a PNG grid: what makes an image class T")
    _common(p)
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/counterfactuals)")
    p.add_argument("--images", default="0,1,2,3,4,5,6,7", help="comma list of test-set indices")
    p.add_argument("--target", default="runner-up",
                   help=f"{choices_help(COUNTERFACTUAL_TARGETS)}; or a class number, for every image")
    p.add_argument("--start", default="random", help=choices_help(COUNTERFACTUAL_STARTS))
    p.add_argument("--seed", type=int, default=0, help="seeds the random start (0 to 2**63-1)")
    p.add_argument("--radii", default="0.5,1,1.5,2,2.5,3", help="comma list of L2 radii")
    p.add_argument("--steps", type=int, default=500, help="APGD steps per radius")
    p.add_argument("--batch-size", type=int, default=256, help="images x radii per attack batch")
    _device_flags(p)
    p.set_defaults(run=_run_counterfactuals, interrupted="interrupted; nothing was written")


def add_export(sub) -> None:
    p = sub.add_parser("export", formatter_class=FORMATTER,
                       help="write model.pt (plain state_dict, RobustBench names) and model.safetensors")
    _common(p)
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/export)")
    p.set_defaults(run=_run_export, interrupted="interrupted; nothing was written")


def _run_eval(args) -> int:
    from ..evaluation.evaluate import EvalSettings, EvalState, batch_source, evaluate_model, format_table
    from ..evaluation.ood_sets import choose_ood_sets, load_ood_set, training_out_distribution

    args.checkpoint = str(resolve_checkpoint(args.checkpoint))
    model, config, device, channels_last = _load(args)
    attacks = _names("--attacks", args.attacks)
    settings = EvalSettings(
        eps=config.eps_in if args.eps is None else args.eps, steps=args.steps, attacks=tuple(attacks),
        targets=args.targets, robust_samples=args.robust_samples, autoattack=args.autoattack,
        ood_eps=args.ood_eps, ood_steps=args.ood_steps, batch_size=args.batch_size, seed=args.seed,
        backend=args.backend, cuda_graphs=args.cuda_graphs,
    ).validate()
    for flag, value in (("--samples", args.samples), ("--ood-samples", args.ood_samples)):
        if value < 0:
            raise UserError(f"{flag} must be >= 0, got {value}")
    classes = get_dataset(config.dataset).num_classes
    if "apgd-t" in attacks and settings.targets > classes - 1:
        raise UserError(f"--targets {settings.targets}: a model of {classes} classes has {classes - 1} other "
                        f"classes to target; use --targets {classes - 1} or fewer")
    data_dir = args.data_dir or config.data_dir
    test = _test_split(config, data_dir)
    source = dict(batch_size=settings.batch_size, device=device, channels_last=channels_last)
    test_set = batch_source(test.images, test.labels, limit=args.samples, **source)
    requested = _names("--ood", args.ood) if args.ood is not None else None
    ood_specs, notes = choose_ood_sets(requested, config.dataset, training_out_distribution(config))
    for line in notes:
        print(line, file=sys.stderr)
    ood_sets = {spec: batch_source(load_ood_set(spec, dataset=config.dataset, test_images=test.images,
                                                data_dir=data_dir, samples=args.ood_samples, seed=config.seed,
                                                skip_bad_images=args.skip_bad_images),
                                   None, limit=args.ood_samples, **source)
                for spec in ood_specs}

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    make_directory(out)
    state = EvalState(out / EVAL_STATE, _identity(args, data_dir))
    args.interrupted = (f"interrupted; the batches evaluated so far are kept in {out / EVAL_STATE}: the same "
                        "command continues from there")
    evaluated = describe_weights(args.checkpoint, args.weights)
    print(f"evaluating {config.arch}, {evaluated}, on {device} -> {out}", flush=True)
    results = evaluate_model(model, test_set, ood_sets, settings, state, test_images=len(test))
    results = {"checkpoint": str(args.checkpoint), "weights": args.weights, "evaluated": evaluated,
               "arch": config.arch, "dataset": config.dataset, **results}
    atomic_write_text(out / EVAL_RESULTS, json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"results: {out / EVAL_RESULTS}")
    return 0


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


def describe_weights(path: str | Path, weights: str) -> str:
    """Which weights are evaluated: file, EMA or raw model, and the training progress they come from."""
    from ..training.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    kind = "EMA weights" if weights == "ema" else "raw model weights (not the EMA)"
    best, step = state.get("best"), state["trainer"].get("steps_done")
    if isinstance(best, dict) and best.get("step") == step:  # best.pt (or a last checkpoint that was the best)
        return (f"{path}: {kind}, epoch {best['epoch']} of {state['config'].get('epochs')} "
                f"(best clean test accuracy of the EMA, {100 * best['test_clean_acc']:.2f} %)")
    return f"{path}: {kind}, after step {step} (the last checkpoint)"


def _run_counterfactuals(args) -> int:
    import numpy as np
    import torch

    from ..evaluation.counterfactuals import choose_targets, counterfactuals, save_grid, target_probability

    args.checkpoint = str(resolve_checkpoint(args.checkpoint))
    model, config, device, _ = _load(args)
    test = _test_split(config, args.data_dir or config.data_dir)
    indices = [_int("--images", v) for v in _names("--images", args.images)]
    bad = [i for i in indices if not 0 <= i < len(test)]
    if bad:
        raise UserError(f"--images: index {bad[0]} is outside the test set (0..{len(test) - 1})")
    radii = [_float("--radii", v) for v in _names("--radii", args.radii)]
    for radius in radii:
        check_number("--radii", radius, above=0)
    check_number("--steps", args.steps, at_least=1, integer=True)
    check_counterfactual_target(args.target, test.num_classes)
    lookup(COUNTERFACTUAL_STARTS, args.start, "--start", "start")
    check_number("--seed", args.seed, integer=True, **SEED_RANGE)

    images = np.ascontiguousarray(test.images[indices])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    labels = torch.as_tensor(test.labels[indices], dtype=torch.int64, device=device)
    targets = choose_targets(model, x, labels, args.target)
    adv, conf = counterfactuals(model, x, targets, radii, steps=args.steps, backend=args.backend,
                                batch_size=args.batch_size, start=args.start, seed=args.seed)
    original_conf = target_probability(model, x, targets)

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "counterfactuals"
    make_directory(out)
    atomic_write(out / "counterfactuals.png", lambda tmp: save_grid(
        tmp, x, adv, conf, original_conf, radii, labels, targets, class_names=get_dataset(config.dataset).class_names))
    tensors = dict(original=x, counterfactuals=adv, target_confidence=conf, original_target_confidence=original_conf,
                   radii=torch.tensor(radii), labels=labels, targets=targets, indices=torch.tensor(indices))
    atomic_write_safetensors(out / "counterfactuals.safetensors",
                             {name: t.detach().cpu().contiguous() for name, t in tensors.items()})
    print(f"counterfactuals of {len(indices)} images at radii {', '.join(f'{r:g}' for r in radii)} "
          f"({args.steps} steps): {out / 'counterfactuals.png'}, {out / 'counterfactuals.safetensors'}")
    return 0


def check_counterfactual_target(target: str, num_classes: int) -> None:
    """--target: a rule of COUNTERFACTUAL_TARGETS or a class of the model; UserError otherwise."""
    if target in COUNTERFACTUAL_TARGETS or (target.isdigit() and int(target) < num_classes):
        return
    raise UserError(f"--target must be {', '.join(COUNTERFACTUAL_TARGETS)} or a class in 0..{num_classes - 1}, "
                    f"got {target!r}")


def _run_export(args) -> int:
    from ..evaluation.export import export_checkpoint

    args.checkpoint = str(resolve_checkpoint(args.checkpoint))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "export"
    pt_path, st_path = export_checkpoint(args.checkpoint, out, args.weights)
    print(f"exported {args.weights} weights: {pt_path}, {st_path}")
    return 0


def _load(args):
    """(model on its device in eval mode, TrainConfig, device, channels_last) for a command's flags."""
    import torch

    from ..evaluation.export import model_from_checkpoint
    from ..training.distributed import resolve_device
    from ..training.trainer import wants_channels_last

    device = resolve_device(args.device)
    model, config = model_from_checkpoint(args.checkpoint, args.weights)
    channels_last = wants_channels_last(config, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model, config, device, channels_last


def _test_split(config, data_dir):
    from ..data import load_in_distribution

    return load_in_distribution(config.dataset, data_dir, train=False, seed=config.seed)


def _identity(args, data_dir) -> dict:
    """What must not change between a run and its resumption: the weights (the checkpoint's file and
    content: its SHA-256, or for a file written before checksums its size and time), data,
    batching, seed."""
    from ..digest import verify

    path = Path(args.checkpoint)
    stat = path.stat()
    content = verify(path) or f"{stat.st_size} bytes, modified {stat.st_mtime_ns}"
    return {"checkpoint": str(path.resolve()), "content": content, "weights": args.weights,
            "data_dir": str(data_dir), "batch_size": args.batch_size, "seed": args.seed}


def _names(flag: str, text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if items == ["none"]:
        return []
    if not items:
        raise UserError(f"{flag}: empty list")
    return items


def _int(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not an integer") from None


def _float(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not a number") from None
