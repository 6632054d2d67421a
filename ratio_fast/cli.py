"""Command line: `ratio-fast train ...` (also `python -m ratio_fast.cli train ...`)."""
from __future__ import annotations

import argparse
import sys

from .config import AMP_DTYPES, ATTACK_SCHEDULES, ATTACKS, AUGMENTATIONS, BACKENDS, LOADERS, MODES, TrainConfig
from .cli_format import HelpFormatter
from .errors import TrainingStopped, UserError
from .eval_cli import add_counterfactuals, add_eval, add_export


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
                       formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help="cifar10, cifar100 or synthetic (built in, offline)")
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
    g.add_argument("--synthetic-size", type=int, default=d.synthetic_size, help="training images of the synthetic set (default 10240)")
    g.add_argument("--augment", default=d.augment, choices=AUGMENTATIONS,
                   help="of both batches. autoaugment_cutout: the authors' (crop from a 4-pixel padding of the "
                        "mean colour, flip, AutoAugment's CIFAR-10 policy, a 16x16 Cutout of the mean colour); "
                        "crop_flip: crop from a zero padding and flip; none")
    g.add_argument("--no-augment", "--cutout", dest="replaced_flag", nargs=0, action=_Replaced, help=argparse.SUPPRESS)

    g = p.add_argument_group("model and optimization")
    g.add_argument("--arch", default=d.arch, help="wrn34, wrn28, resnet18, resnet50 or tiny")
    g.add_argument("--mode", default=d.mode, choices=MODES,
                   help="ratio: in- and out-distribution attacks; at: in-distribution only; plain: no attacks")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after this many optimizer steps in total")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="in-distribution batch (out-distribution: the same)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--ema-decay", type=float, default=d.ema_decay)
    g.add_argument("--seed", type=int, default=d.seed)

    g = p.add_argument_group("attacks (L2, ArgminPGD: momentum on the L1-normalized gradient, best iterate)")
    g.add_argument("--attack", default=d.attack, choices=ATTACKS,
                   help="pgd: the authors' ArgminPGD; apgd: APGD (step-size schedule, stronger, same cost)")
    g.add_argument("--eps-in", type=float, default=d.eps_in)
    g.add_argument("--eps-out", type=float, default=d.eps_out)
    g.add_argument("--steps-in", type=int, default=d.steps_in)
    g.add_argument("--steps-out", type=int, default=d.steps_out)
    g.add_argument("--step-size-in", type=float, default=d.step_size_in)
    g.add_argument("--step-size-out", type=float, default=d.step_size_out)
    g.add_argument("--attack-momentum", type=float, default=d.attack_momentum)
    g.add_argument("--lam", type=float, default=d.lam, help="weight of the out-distribution loss")

    g = p.add_argument_group("speed and hardware")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    # None: the fast choice for the device, decided when the run knows its device.
    on_off = argparse.BooleanOptionalAction
    g.add_argument("--amp", action=on_off, default=d.amp,
                   help="mixed precision, perturbations stay fp32 (default: on for CUDA, off for CPU)")
    g.add_argument("--amp-dtype", default=d.amp_dtype, choices=AMP_DTYPES)
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
                   help="attacks compute input gradients only, no weight gradients")
    g.add_argument("--fused-optimizer", action=on_off, default=d.fused_optimizer,
                   help="SGD's fused single-kernel update")
    g.add_argument("--backend", default=d.backend, choices=BACKENDS,
                   help="fused PGD step: auto (Triton on CUDA, torch on CPU), triton, native (kernels/, C++/OpenMP "
                        "or CUDA, built by pip install), or the plain-torch reference")

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<arch>-<mode>)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out (or from CHECKPOINT)")
    g.add_argument("--eval-samples", type=int, default=d.eval_samples,
                   help="test images for the per-epoch robust accuracy (0 to skip)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps (default: at the end of each epoch)")
    g.add_argument("--max-skipped-steps", type=int, default=d.max_skipped_steps,
                   help="stop when this many steps in a row had a non-finite loss or gradient (they are skipped)")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="JSON file of settings (e.g. a run's config.json); flags given here override it")

    g = p.add_argument_group("multi-GPU (launch with torchrun --nproc_per_node=N -m ratio_fast.cli train ...)")
    g.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over all ranks' batches")


def _run_train(args) -> int:
    from .run import Run  # torch and the data stack load only when a command runs

    fields = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    out = args.out or f"runs/{config.dataset}-{config.arch}-{config.mode}"
    Run(config, out, resume=args.resume).fit()
    return 0


# Each entry adds one more subcommand and sets `run` (args -> exit code) as its default.
SUBCOMMANDS = [add_eval, add_counterfactuals, add_export]


def build_parser(train_defaults: TrainConfig | None = None) -> argparse.ArgumentParser:
    """The CLI; `train_defaults` (from --config FILE) replace the built-in defaults of `train`."""
    parser = argparse.ArgumentParser(prog="ratio-fast", description="Fast RATIO training for robust image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub, train_defaults or TrainConfig())
    sub.choices["train"].set_defaults(run=_run_train)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "config", None):  # the file sets defaults; flags on the command line win
            from .config_file import read_config_file

            args = build_parser(TrainConfig(**read_config_file(args.config))).parse_args(argv)
        return args.run(args)
    except UserError as e:
        print(f"ratio-fast: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"ratio-fast: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ratio-fast: interrupted; the last checkpoint written is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
