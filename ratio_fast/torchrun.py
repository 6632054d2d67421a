"""`python -m ratio_fast.torchrun [torchrun's arguments]`: torchrun with the workers' exit code
(the launcher is ratio_fast/cli/torchrun.py; this door keeps the short command)."""
import sys

from .cli.torchrun import main

if __name__ == "__main__":
    sys.exit(main())
