"""Command line: `ratio-fast train ...` (also `python -m ratio_fast.cli train ...`)."""
from __future__ import annotations

import argparse
import sys

from .config import AMP_DTYPES, ATTACKS, LOADERS, MODES, TrainConfig
from .errors import UserError

DEFAULTS = TrainConfig()


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="RATIO training (or plain adversarial / clean training with --mode)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help="cifar10, cifar100 or synthetic (built in, offline)")
    g.add_argument("--data-dir", default=d.data_dir, help="where the CIFAR python-pickle folders are (or get downloaded)")
    g.add_argument("--out-data", default=None,
                   help="out-distribution: a .npy of (N,32,32,3) uint8 images (e.g. 300K random images), "
                        "or cifar10 / cifar100 / synthetic; default: cifar100 for cifar10, cifar10 for "
                        "cifar100, synthetic for synthetic")
    g.add_argument("--out-exclude", default=None, metavar="FILE",
                   help="text file of out-distribution indices to leave out, one per line "
                        "(e.g. the published Tiny Images / CIFAR overlap list)")
    g.add_argument("--loader", default=d.loader, choices=LOADERS,
                   help="gpu: whole data set on the device; dali: NVIDIA DALI pipeline; torch: DataLoader "
                        "workers; auto: the fastest that fits, as measured")
    g.add_argument("--synthetic-size", type=int, default=None, help="training images of the synthetic set (default 10240)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")

    g = p.add_argument_group("model and optimization")
    g.add_argument("--arch", default=d.arch, help="wrn34, wrn28, resnet18, resnet50 or tiny")
    g.add_argument("--mode", default=d.mode, choices=MODES,
                   help="ratio: in- and out-distribution attacks; at: in-distribution only; plain: no attacks")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in total")
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
    g.add_argument("--amp", action="store_true", help="mixed precision (perturbations stay fp32)")
    g.add_argument("--amp-dtype", default=d.amp_dtype, choices=AMP_DTYPES)
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for CUDA)")
    g.add_argument("--backend", default=d.backend, choices=("auto", "triton", "torch"),
                   help="fused PGD step: Triton on CUDA (auto), or the plain-torch reference")

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<arch>-<mode>)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out (or from CHECKPOINT)")
    g.add_argument("--eval-samples", type=int, default=d.eval_samples,
                   help="test images for the per-epoch robust accuracy (0 to skip)")


def _run_train(args) -> int:
    from .run import Run  # torch and the data stack load only when a command runs

    fields = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    out = args.out or f"runs/{config.dataset}-{config.arch}-{config.mode}"
    Run(config, out, resume=args.resume).fit()
    return 0


def _add_train(sub) -> None:
    _train_parser(sub)
    sub.choices["train"].set_defaults(run=_run_train)


# Each entry adds one subcommand and sets `run` (args -> exit code) as its default.
SUBCOMMANDS = [_add_train]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ratio-fast", description="Fast RATIO training for robust image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as e:
        print(f"ratio-fast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ratio-fast: interrupted; the last epoch's checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
