"""AutoAttack itself (Croce & Hein, ICML 2020), run from its package: `pip install "ratio-fast[eval]"`.

The package index serves fra31/auto-attack as `pyautoattack` (MIT); fra31's own module
`autoattack` (installed from GitHub) works as well. The two differ in a few keyword names and
in what `run_standard_evaluation` returns; `AutoAttackPackage` hides that. Imported only when
`ratio-fast eval --autoattack` (or a test) asks for it.

    reference = AutoAttackPackage(eps=0.5)                      # the standard L2 version
    AutoAttackPackage(8 / 255, norm="linf")                     # the standard L-infinity version
    robust = reference.robust(model, x, y, seed=0)              # (N,) bool, AutoAttack's verdict
    AutoAttackPackage(0.5, attacks=("apgd-ce", "apgd-t"))       # the same settings, fewer attacks
"""
from __future__ import annotations

import importlib

import torch

from ..choices import NORMS
from ..errors import UserError

MODULES = ("pyautoattack", "autoattack")  # the registry's name first
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
INSTALL_HINT = 'pip install "ratio-fast[eval]" (the pyautoattack package)'


def import_autoattack():
    """The first importable AutoAttack module of MODULES; UserError with the install line if none is."""
    for name in MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UserError(f"--autoattack needs AutoAttack: {INSTALL_HINT}")


class AutoAttackPackage:
    """AutoAttack's evaluation in `norm` (a name of choices.NORMS) with the package's standard settings
    (one restart, 9 target classes).

    attacks: a subset of STANDARD_ATTACKS, run in the standard order (default: all four, the
    standard version). square_queries, fab_iterations: smaller budgets than the standard 5000
    and 100, for CI only; `description` then says so.
    """

    def __init__(self, eps: float, attacks: tuple[str, ...] = STANDARD_ATTACKS,
                 square_queries: int | None = None, fab_iterations: int | None = None, norm: str = "l2"):
        unknown = [a for a in attacks if a not in STANDARD_ATTACKS]
        if unknown:
            raise ValueError(f"attacks must be among {STANDARD_ATTACKS}, got {unknown}")
        self.module = import_autoattack()
        self.eps, self.norm = eps, NORMS[norm]
        self.attacks = tuple(a for a in STANDARD_ATTACKS if a in attacks)
        self.square_queries, self.fab_iterations = square_queries, fab_iterations

    @property
    def description(self) -> str:
        version = getattr(self.module, "__version__", None)
        package = self.module.__name__ + (f" {version}" if version else "")
        what = "standard" if self.attacks == STANDARD_ATTACKS else " + ".join(self.attacks)
        reduced = [f"{label} {value}" for label, value in (("square queries", self.square_queries),
                                                             ("FAB iterations", self.fab_iterations))
                   if value is not None]
        budget = f", reduced budget: {', '.join(reduced)}" if reduced else ""
        return f"AutoAttack {what} ({package}{budget})"

    def robust(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        """Per sample: still classified correctly after every attack (misclassified clean points are not robust)."""
        adversary = self._adversary(model, x.device, seed)
        with torch.no_grad():  # AutoAttack enables gradients where it needs them
            if self.module.__name__ == "pyautoattack":
                _, labels = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
            else:
                _, labels = adversary.run_standard_evaluation(x, y, bs=x.shape[0], return_labels=True)
        return labels.to(y.device) == y

    def _adversary(self, model, device, seed: int):
        options = dict(norm=self.norm.autoattack, eps=self.eps, version="standard", device=device, seed=seed)
        if self.module.__name__ != "pyautoattack":
            options["verbose"] = False
        adversary = self.module.AutoAttack(model, **options)
        # The standard version has set every attack's budget; keep those and run the chosen attacks.
        adversary.attacks_to_run = list(self.attacks)
        if self.square_queries is not None:
            adversary.square.n_queries = self.square_queries
        if self.fab_iterations is not None:
            adversary.fab.n_iter = self.fab_iterations
        return adversary
