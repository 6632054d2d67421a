"""Number checks shared by the CLI, config files and the API objects, with one message format.

A radius, step size or weight that is NaN or infinite passes every `< 0` test and then trains
nothing (a NaN radius never projects; an infinite weight skips every step), so each is checked
as a finite number within its range: `check_number("--eps-in", value, at_least=0)`.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

from .errors import UserError


def check_number(name: str, value, *, at_least: float | None = None, above: float | None = None,
                 below: float | None = None, integer: bool = False) -> None:
    """Raise UserError unless `value` is a finite number (an int with `integer`) in the range.

    at_least: value >= at_least; above: value > above; below: value < below.
    """
    bounds = [f">= {at_least:g}" if at_least is not None else "", f"> {above:g}" if above is not None else "",
              f"< {below:g}" if below is not None else ""]
    wanted = ("an integer" if integer else "a finite number") + "".join(f" {b}" for b in bounds if b)
    is_number = isinstance(value, Integral if integer else Real) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value)
            and (at_least is None or value >= at_least)
            and (above is None or value > above)
            and (below is None or value < below)):
        raise UserError(f"{name} must be {wanted}, got {value!r}")
