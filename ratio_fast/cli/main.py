"""Command line: `ratio-fast train ...` (also `python -m ratio_fast.cli train ...`)."""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import warnings
from pathlib import Path

from ..version import __version__
from ..config import ATTACKS, DATA, MODEL, MULTI_GPU, PER_INVOCATION, RUN, SPEED, TrainConfig
from .parser import ArgumentParser, HelpFormatter, add_settings
from ..errors import Note, TrainingStopped, UserError
from .checkpoint_commands import add_counterfactuals, add_eval, add_export

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
    EXIT_USER_ERROR: "a mistake in flags, files or checkpoints, or a file that cannot be written, said in one line",
    EXIT_PREEMPTED: "preempted (SIGTERM/SIGINT): checkpoint saved at a step boundary; requeue with --resume",
    EXIT_INTERRUPTED: "interrupted by a second Ctrl-C; the last checkpoint written is kept",
}
EXIT_CODES_HELP = "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())


class _Replaced(argparse.Action):
    """Flags of earlier versions: say what replaced them."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was replaced by --augment: --augment none (no crop/flip), crop_flip "
                     "(the old default), autoaugment_cutout (the authors', now the default; its Cutout is mean-filled)")


def _train_parser(sub, d: TrainConfig) -> None:
    """The train flags: each TrainConfig setting's (see parser.add_settings), with the flags that are not
    settings placed among them: --out, --resume and --config, and the replaced --no-augment/--cutout."""
    p = sub.add_parser("train", help="RATIO training, or another training type of its family (--mode)",
                       formatter_class=HelpFormatter, epilog=EXIT_CODES_HELP)
    p.set_defaults(interrupted="interrupted; the last checkpoint written is kept")
    g = add_settings(p, TrainConfig, DATA, d)
    g.add_argument("--no-augment", "--cutout", dest="replaced_flag", nargs=0, action=_Replaced, help=argparse.SUPPRESS)
    add_settings(p, TrainConfig, MODEL, d)
    add_settings(p, TrainConfig, ATTACKS, d)
    add_settings(p, TrainConfig, SPEED, d)

    g = p.add_argument_group(RUN)
    g.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<arch>-<mode>)")
    g.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue the run in --out, or the one of CHECKPOINT (a file or its run directory), "
                        "with the checkpoint's settings; flags that would change the computation are refused. "
                        "--resume auto: continue the run in --out if it has a checkpoint, else start it (one "
                        "command line for a job that may be requeued)")
    add_settings(p, TrainConfig, RUN, d, g)
    g.add_argument("--config", default=None, metavar="FILE",
                   help="JSON file of settings (e.g. a run's config.json); flags given here override it")

    add_settings(p, TrainConfig, MULTI_GPU, d)


def _run_train(args) -> int:
    from ..training.checkpoint import CHECKPOINT, load_checkpoint
    from .run import Run  # torch and the data stack load only when a command runs

    settings = {name: value for name, value in vars(args).items() if name in TRAIN_SETTINGS}
    resume_from = None
    if args.resume == "auto":
        args.resume = True if (Path(args.out or default_run_dir(settings)) / CHECKPOINT).is_file() else None
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

    given_only: parsing leaves out every flag not named on the command line (what a resumed run
    compares with its checkpoint, what eval --quick leaves as given).
    """
    parser = ArgumentParser(prog="ratio-fast", description="Fast RATIO training for robust image classifiers.",
                            epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub, (train_defaults or TrainConfig()).flag_defaults())
    sub.choices["train"].set_defaults(run=_run_train)
    for add in SUBCOMMANDS:
        add(sub)
    if given_only:  # (set_defaults would store SUPPRESS as a value for argparse to convert)
        for subparser in sub.choices.values():
            for action in subparser._actions:
                if action.dest != "help":
                    action.default = argparse.SUPPRESS
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with warnings.catch_warnings():
        warnings.simplefilter("default", Note)
        showwarning = warnings.showwarning
        warnings.showwarning = lambda message, category, *rest: (
            print(f"note: {message}", file=sys.stderr) if issubclass(category, Note)
            else showwarning(message, category, *rest))
        code = _main(argv)
    if code == EXIT_PREEMPTED and threading.current_thread() is threading.main_thread():
        # The checkpoint is written and the process only exits now, which takes the interpreter
        # most of a second; a repeated SIGTERM (schedulers signal every process of a job) must
        # not turn exit 75 into "killed" meanwhile.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return code


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        file_settings = {}
        if getattr(args, "config", None):  # the file sets defaults; flags on the command line win
            from .config_file import read_config_file

            file_settings = read_config_file(args.config)
            args = build_parser(TrainConfig(**file_settings)).parse_args(argv)
        named = set(vars(build_parser(given_only=True).parse_args(argv)))  # the flags on the command line
        args.given = named
        if args.command == "train":
            if file_settings:
                from .config_file import check_norm_change

                check_norm_change(args.config, file_settings, named, args.norm)
            args.given_settings = set(file_settings) | (named & TRAIN_SETTINGS)
        return args.run(args)
    except UserError as e:
        print(f"ratio-fast: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingStopped as e:
        print(f"ratio-fast: stopped: {e}", file=sys.stderr)
        return EXIT_CANNOT_CONTINUE
    except KeyboardInterrupt:
        print(f"ratio-fast: {getattr(args, 'interrupted', 'interrupted')}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
