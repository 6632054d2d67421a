"""Command line: `ratio-fast train ...` (also `python -m ratio_fast.cli train ...`)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import (AMP_DTYPES, ATTACK_SCHEDULES, ATTACKS, AUGMENTATIONS, BACKENDS, LOADERS, MODES, PER_INVOCATION,
                     TrainConfig)
from .cli_format import HelpFormatter
from .errors import TrainingStopped, UserError
from .eval_cli import add_counterfactuals, add_eval, add_export

TRAIN_SETTINGS = frozenset(field.name for field in dataclasses.fields(TrainConfig))

# Exit codes, so a job script or a scheduler can tell the endings apart (listed in --help).
EXIT_DONE = 0
EXIT_CANNOT_CONTINUE = 1
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL of sysexits.h: "try again later"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports an interrupted command
EXIT_CODES = {
    EXIT_DONE: "finished (--epochs or --max-steps reached)",
    EXIT_CANNOT_CONTINUE: "stopped: cannot usefully continue (e.g. every step diverges)",
    EXIT_USER_ERROR: "a mistake in flags, files or checkpoints, said in one line",
    EXIT_PREEMPTED: "preempted (SIGTERM/SIGINT): checkpoint saved at a step boundary; requeue with --resume",
    EXIT_INTERRUPTED: "interrupted by a second Ctrl-C; the last checkpoint written is kept",
}
EXIT_CODES_HELP = "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())


class _Lists(argparse.Action):
    """A repeatable flag whose values replace its default (e.g. the list from --config) rather than extend it."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else list(items)
        setattr(namespace, self.dest, items + [values])


class _Replaced(argparse.Action):
    """Flags of earlier versions: say what replaced them."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was replaced by --augment: --augment none (no crop/flip), crop_flip "
                     "(the old default), autoaugment_cutout (the authors', now the default; its Cutout is mean-filled)")


def _train_parser(sub, d: TrainConfig) -> None:
    p = sub.add_parser("train", help="RATIO training (or plain adversarial / clean training with --mode)",
                       formatter_class=HelpFormatter, epilog=EXIT_CODES_HELP)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help="in-distribution: cifar10, cifar100 or synthetic (built in, offline)")
    g.add_argument("--data-dir", default=d.data_dir, help="where the CIFAR python-pickle folders are (or get downloaded)")
    g.add_argument("--out-data", default=d.out_data,
                   help="out-distribution: a .npy of (N,32,32,3) uint8 images (e.g. 300K random images), the 80M "
                        "Tiny Images tiny_images.bin, a folder of PNG/JPEG images, or cifar10 / cifar100 / "
                        "synthetic; default: cifar100 for cifar10, cifar10 for cifar100, synthetic for synthetic")
    g.add_argument("--out-exclude", action=_Lists, default=d.out_exclude, metavar="FILE[:0|:1]",
                   help="a list of out-distribution rows to leave out, one number per line, 1-based (FILE or "
                        "FILE:1, e.g. the published 80mn_cifar_idxs.txt) or 0-based (FILE:0, e.g. the authors' "
                        "80mn_cifar10_test_idxs.txt); repeat for several lists (configs/ratio-cifar10-wrn34.json)")
    g.add_argument("--loader", default=d.loader, choices=LOADERS,
                   help="gpu: whole data set on the device; dali: NVIDIA DALI pipeline; torch: DataLoader "
                        "workers; auto: the fastest that fits, as measured")
    g.add_argument("--synthetic-size", type=int, default=d.synthetic_size,
                   help="training images of the synthetic set (default: 10240)")
    g.add_argument("--augment", default=d.augment, choices=AUGMENTATIONS,
                   help="of both batches. autoaugment_cutout: the authors' (crop from a 4-pixel padding of the "
                        "mean colour, flip, AutoAugment's CIFAR-10 policy, a 16x16 Cutout of the mean colour); "
                        "crop_flip: crop from a zero padding and flip; none")
    g.add_argument("--no-augment", "--cutout", dest="replaced_flag", nargs=0, action=_Replaced, help=argparse.SUPPRESS)

    g = p.add_argument_group("model and optimization")
    g.add_argument("--arch", default=d.arch, help="wrn34, wrn28, resnet18, resnet50 or tiny")
    g.add_argument("--mode", default=d.mode, choices=MODES,
                   help="ratio: in- and out-distribution attacks; at: in-distribution only; plain: no attacks")
    g.add_argument("--epochs", type=int, default=d.epochs,
                   help="passes over the training set (the cosine schedule's length)")
    g.add_argument("--max-steps", type=int, default=d.max_steps,
                   help="stop after this many optimizer steps in total (a limit of this invocation: --resume "
                        "does not inherit it)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="in-distribution batch (out-distribution: the same)")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of SGD (Nesterov), cosine to 0 per step")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help="decay of the weight average used for evaluation (warm-up (1+n)/(10+n))")
    g.add_argument("--seed", type=int, default=d.seed, help="data order, augmentation, initialization and attack starts")

    g = p.add_argument_group("attacks (L2, ArgminPGD: momentum on the L1-normalized gradient, best iterate)")
    g.add_argument("--attack", default=d.attack, choices=ATTACKS,
                   help="pgd: the authors' ArgminPGD; apgd: APGD (step-size schedule, stronger, same cost)")
    g.add_argument("--eps-in", type=float, default=d.eps_in, help="L2 radius of the in-distribution attack")
    g.add_argument("--eps-out", type=float, default=d.eps_out, help="L2 radius of the out-distribution attack")
    g.add_argument("--steps-in", type=int, default=d.steps_in, help="in-distribution attack steps")
    g.add_argument("--steps-out", type=int, default=d.steps_out, help="out-distribution attack steps")
    g.add_argument("--step-size-in", type=float, default=d.step_size_in,
                   help="L2 length of each in-distribution attack step")
    g.add_argument("--step-size-out", type=float, default=d.step_size_out,
                   help="L2 length of each out-distribution attack step")
    g.add_argument("--attack-momentum", type=float, default=d.attack_momentum,
                   help="ArgminPGD's momentum on the L1-normalized gradient (0: plain PGD)")
    g.add_argument("--lam", type=float, default=d.lam, help="weight of the out-distribution loss")

    g = p.add_argument_group("speed and hardware")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    # None: the fast choice for the device, decided when the run knows its device.
    on_off = argparse.BooleanOptionalAction
    g.add_argument("--amp", action=on_off, default=d.amp,
                   help="mixed precision, perturbations stay fp32 (default: on for CUDA, off for CPU)")
    g.add_argument("--amp-dtype", default=d.amp_dtype, choices=AMP_DTYPES,
                   help="autocast type under --amp (fp16 adds a gradient scaler)")
    g.add_argument("--channels-last", action=on_off, default=d.channels_last,
                   help="channels_last memory format (default: on for CUDA, off for CPU)")
    g.add_argument("--attack-schedule", default=d.attack_schedule, choices=ATTACK_SCHEDULES,
                   help="in- and out-distribution attacks one after the other, on two CUDA streams, or as "
                        "one concatenated batch; auto: measured once per GPU and setting, then cached")
    g.add_argument("--cuda-graphs", action=on_off, default=d.cuda_graphs,
                   help="replay the attacks from a CUDA graph (default: on for CUDA, off for CPU)")
    g.add_argument("--compile", action=on_off, default=d.compile,
                   help="torch.compile the model (default: on for CUDA, off for CPU)")
    g.add_argument("--fp32-first-conv", action=on_off, default=d.fp32_first_conv,
                   help="under --amp, keep the first convolution in fp32 (small perturbations survive)")
    g.add_argument("--input-grad-only", action=on_off, default=d.input_grad_only,
                   help="attacks freeze the weights, so a compiled backward computes no weight gradients "
                        "(eager autograd.grad(loss, x) skips them anyway)")
    g.add_argument("--fused-optimizer", action=on_off, default=d.fused_optimizer,
                   help="SGD's fused single-kernel update")
    g.add_argument("--backend", default=d.backend, choices=BACKENDS,
                   help="fused PGD step: auto (Triton on CUDA, torch on CPU), triton, native (kernels/, C++/OpenMP "
                        "or CUDA, built by pip install), or the plain-torch reference")

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<arch>-<mode>)")
    g.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue the run in --out, or the one of CHECKPOINT (a file or its run directory), "
                        "with the checkpoint's settings; flags that would change the computation are refused")
    g.add_argument("--eval-samples", type=int, default=d.eval_samples,
                   help="test images for the per-epoch robust accuracy (0 to skip)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps (default: at the end of each epoch)")
    g.add_argument("--max-skipped-steps", type=int, default=d.max_skipped_steps,
                   help="stop when this many steps in a row had a non-finite loss or gradient (they are skipped)")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="JSON file of settings (e.g. a run's config.json); flags given here override it")

    g = p.add_argument_group("multi-GPU (launch with torchrun --nproc_per_node=N -m ratio_fast.cli train ...)")
    g.add_argument("--sync-bn", action="store_true", default=d.sync_bn,
                   help="BatchNorm statistics over all ranks' batches")


def _run_train(args) -> int:
    from .checkpoint import CHECKPOINT, load_checkpoint
    from .run import Run  # torch and the data stack load only when a command runs

    settings = {name: value for name, value in vars(args).items() if name in TRAIN_SETTINGS}
    resume_from = None
    if args.resume:
        # The checkpoint's settings, with only what was named here (flags, --config) on top;
        # Run refuses the changes that would make it another run.
        if args.resume is True:
            resume_from = Path(args.out or default_run_dir(settings)) / CHECKPOINT
        else:
            resume_from = Path(args.resume)
            if resume_from.is_dir():  # a run directory
                resume_from = resume_from / CHECKPOINT
        saved = load_checkpoint(resume_from)["config"]
        inherited = {name: value for name, value in saved.items() if name not in PER_INVOCATION}
        config = TrainConfig.from_dict({**inherited, **{name: settings[name] for name in args.given_settings}})
        out = args.out or resume_from.parent
    else:
        config = TrainConfig(**settings)
        out = args.out or default_run_dir(settings)
    run = Run(config, out, resume=resume_from or False)
    run.fit()
    return EXIT_PREEMPTED if run.stopped_by else EXIT_DONE


def default_run_dir(settings: dict) -> str:
    return f"runs/{settings['dataset']}-{settings['arch']}-{settings['mode']}"


# Each entry adds one more subcommand and sets `run` (args -> exit code) as its default.
SUBCOMMANDS = [add_eval, add_counterfactuals, add_export]


def build_parser(train_defaults: TrainConfig | None = None, given_only: bool = False) -> argparse.ArgumentParser:
    """The CLI; `train_defaults` (from --config FILE) replace the built-in defaults of `train`.

    given_only: parsing leaves out every train setting not named on the command line (what a
    resumed run compares with its checkpoint).
    """
    parser = argparse.ArgumentParser(prog="ratio-fast", description="Fast RATIO training for robust image classifiers.",
                                     epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub, train_defaults or TrainConfig())
    sub.choices["train"].set_defaults(run=_run_train)
    if given_only:  # (set_defaults would store SUPPRESS as a value for argparse to convert)
        for action in sub.choices["train"]._actions:
            if action.dest in TRAIN_SETTINGS:
                action.default = argparse.SUPPRESS
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        file_settings = {}
        if getattr(args, "config", None):  # the file sets defaults; flags on the command line win
            from .config_file import read_config_file

            file_settings = read_config_file(args.config)
            args = build_parser(TrainConfig(**file_settings)).parse_args(argv)
        if args.command == "train":
            named = vars(build_parser(given_only=True).parse_args(argv))
            args.given_settings = set(file_settings) | (set(named) & TRAIN_SETTINGS)
        return args.run(args)
    except UserError as e:
        print(f"ratio-fast: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingStopped as e:
        print(f"ratio-fast: stopped: {e}", file=sys.stderr)
        return EXIT_CANNOT_CONTINUE
    except KeyboardInterrupt:
        print("ratio-fast: interrupted; the last checkpoint written is kept", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
