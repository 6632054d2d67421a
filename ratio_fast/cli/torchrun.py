"""torchrun with the workers' exit code: `python -m ratio_fast.torchrun [torchrun's arguments]`.

    python -m ratio_fast.torchrun --nproc_per_node=8 -m ratio_fast.cli train --out runs/a ...

torchrun exits 1, with a traceback, whenever a worker exits with anything but 0, so a job
script cannot tell a preempted run (75: requeue it with --resume) from a broken one. This runs
torchrun itself (torch.distributed.run: the same arguments, the same agent) and ends with the
code the workers ended with, in one line instead of the traceback:

- every worker exited with 0: 0;
- the workers that exited with a code of their own all gave the same one (75 preempted, 1, 2,
  130; see `ratio-fast train --help`): that code. Workers killed by a signal besides them do not
  count: once one worker has exited, torchrun's agent stops the others with SIGTERM, and a rank
  exits 75 only after the checkpoint of every rank is written;
- different codes of their own: 1; only signals: 128 + the signal, as a shell reports it;
- the launcher itself got SIGTERM (a scheduler's preemption): 75. The agent passes the signal on
  to the workers, which checkpoint at their next step boundary (a repeated SIGTERM changes
  nothing for them) or, past torchrun's shutdown timeout, are killed with the last checkpoint
  kept: either way `--resume` continues the run.
"""
from __future__ import annotations

import signal
import sys

from .main import EXIT_CANNOT_CONTINUE, EXIT_CODES, EXIT_PREEMPTED


def exit_code(codes: dict[int, int]) -> int:
    """The launcher's exit code from the failed workers' {rank: exit code}, negative for a signal."""
    own = {code for code in codes.values() if code > 0}
    if len(own) == 1:
        return own.pop()
    if own:
        return EXIT_CANNOT_CONTINUE
    return 128 - min(codes.values(), default=-signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as failed:
        codes = {rank: failure.exitcode for rank, failure in sorted(failed.failures.items())}
        code = exit_code(codes)
        ranks = ", ".join(f"rank {rank}: {_shown(c)}" for rank, c in codes.items())
        print(f"ratio-fast: workers ended ({ranks}): exit {code}"
              f"{f' ({EXIT_CODES[code]})' if code in EXIT_CODES else ''}", file=sys.stderr)
        return code
    except SignalException as stopped:
        code = EXIT_PREEMPTED if stopped.sigval == signal.SIGTERM else 128 + stopped.sigval
        print(f"ratio-fast: the launcher got {signal.Signals(stopped.sigval).name}: exit {code}"
              f"{f' ({EXIT_CODES[code]})' if code in EXIT_CODES else ''}", file=sys.stderr)
        return code
    return 0


def _shown(code: int) -> str:
    if code >= 0:
        return f"exit {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


if __name__ == "__main__":
    sys.exit(main())
