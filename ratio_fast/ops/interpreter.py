"""Whether Triton's interpreter (TRITON_INTERPRET=1, how backend 'triton' runs on CPU tensors)
can run the kernels with the installed triton and numpy.

Triton before 3.7 converts a one-element array with int() when a kernel argument bounds a loop,
which numpy 2.4 made a TypeError (triton-lang/triton#9171, fixed by #9172 in triton 3.7): every
kernel here loops over its sample, so that combination fails them all. Compiled Triton (on a GPU,
or ahead of time in bench/kernels_aot.py) is not affected. The CPU launchers call `require_working_interpreter`,
so the failure is one line that says what to install; tests/conftest.py turns it into a skip
with that reason.
"""
from __future__ import annotations

import re

from ..errors import UserError

FIXED_IN_TRITON = (3, 7)
BROKEN_FROM_NUMPY = (2, 4)


class InterpreterUnusable(UserError):
    """Triton's interpreter cannot run the kernels with the installed packages."""


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def interpreter_defect(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter fails with these versions, or None where it works."""
    if _major_minor(triton_version) < FIXED_IN_TRITON and _major_minor(numpy_version) >= BROKEN_FROM_NUMPY:
        return (f"Triton {triton_version}'s interpreter fails with numpy {numpy_version} (int() of a 1-element array, "
                f"triton-lang/triton#9171): install 'numpy<2.4' or 'triton>=3.7' to run backend 'triton' on the CPU")
    return None


def require_working_interpreter(kernel) -> None:
    """Raise InterpreterUnusable if `kernel` runs in the interpreter and the installed triton and
    numpy break it."""
    import numpy
    import triton
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(kernel, InterpretedFunction):
        return
    defect = interpreter_defect(triton.__version__, numpy.__version__)
    if defect is not None:
        raise InterpreterUnusable(defect)
