"""Number and name checks shared by the CLI, config files and the API objects, with one message format.

A radius, step size or weight that is NaN or infinite passes every `< 0` test and then trains
nothing (a NaN radius never projects; an infinite weight skips every step), so each is checked
as a finite number within its range: `check_number("--eps-in", value, at_least=0)`.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

from .errors import UserError


# Seeds (--seed of train and eval): what numpy's seed sequences and torch's generators both take,
# with room for the per-rank offset. Larger or negative seeds are refused rather than wrapped.
SEED_RANGE = {"at_least": 0, "at_most": 2**63 - 1}
# ArgminPGD's momentum (--attack-momentum, L2PGD): above 1 the old gradients outgrow the new ones without bound.
MOMENTUM_RANGE = {"at_least": 0, "at_most": 1}


def lookup(rows: dict, name, flag: str, what: str):
    """The row `name` of a table (choices.py, datasets.py); for any other name a UserError naming
    the flag and the choices: "--arch: unknown architecture 'foo'; choose one of wrn34, ..."."""
    if not isinstance(name, str) or name not in rows:
        raise UserError(f"{flag}: unknown {what} {name!r}; choose one of {', '.join(rows)}")
    return rows[name]


def check_number(name: str, value, *, at_least: float | None = None, at_most: float | None = None,
                 above: float | None = None, below: float | None = None, integer: bool = False) -> None:
    """Raise UserError unless `value` is a finite number (an int with `integer`) in the range.

    at_least: value >= at_least; at_most: value <= at_most; above: value > above; below: value < below.
    """
    bounds = [f"{sign} {_shown(bound)}" for sign, bound in ((">=", at_least), ("<=", at_most), (">", above),
                                                             ("<", below)) if bound is not None]
    wanted = ("an integer" if integer else "a finite number") + (" " + " and ".join(bounds) if bounds else "")
    is_number = isinstance(value, Integral if integer else Real) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value)
            and (at_least is None or value >= at_least)
            and (at_most is None or value <= at_most)
            and (above is None or value > above)
            and (below is None or value < below)):
        raise UserError(f"{name} must be {wanted}, got {value!r}")


def _shown(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"
