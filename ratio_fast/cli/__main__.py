"""`python -m ratio_fast.cli ...`: the `ratio-fast` command."""
import sys

from .main import main

sys.exit(main())
