"""Tests of ratio_fast.choices: the tables of user-facing choices on the ground floor.

The claims: the module is plain Python (it runs without torch or numpy); `import ratio_fast`
loads nothing of the data package, since config.py takes its choices from here; the --augment
rows say what each augmentation does; the --loader rows say which loaders give the reference
batches (DALI only without AutoAugment), and `same_batches` follows from that; a builder table
that does not cover exactly its rows fails at import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ratio_fast.choices as choices
from ratio_fast.choices import AUGMENTATIONS, LOADER_KINDS, LOADERS, MEAN_COLOUR, ZERO, check_builders, same_batches
from ratio_fast.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_tables_run_without_torch_or_numpy():
    """choices.py on its own, as a file: it imports nothing heavy and nothing of the package."""
    loaded = run_python(
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('tables', {str(Path(choices.__file__))!r})\n"
        "module = sys.modules['tables'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(sorted(name for name in ('torch', 'numpy', 'ratio_fast') if name in sys.modules), len(module.LOADERS))")
    assert loaded == "[] 4"


def test_importing_the_package_loads_nothing_of_the_data_package():
    loaded = run_python("import sys, ratio_fast; print(sorted(m for m in sys.modules if m.split('.')[:2] == "
                        "['ratio_fast', 'data']))")
    assert loaded == "[]"


def test_augmentation_rows_say_what_each_name_does():
    authors, crop_flip, none = (AUGMENTATIONS[name] for name in ("autoaugment_cutout", "crop_flip", "none"))
    assert (authors.crop_fill, authors.autoaugment, authors.cutout_size) == (MEAN_COLOUR, True, 16)
    assert (crop_flip.crop_fill, crop_flip.autoaugment, crop_flip.cutout_size) == (ZERO, False, 0)
    assert (none.crop_fill, none.autoaugment, none.cutout_size) == (None, False, 0)
    assert TrainConfig().augment == "autoaugment_cutout"


def test_dali_alone_differs_and_only_with_autoaugment():
    assert LOADER_KINDS == ("gpu", "dali", "torch") and LOADERS["auto"].picks
    pairs = {(loader, augment) for loader in LOADERS for augment in AUGMENTATIONS}
    differ = {(loader, augment) for loader, augment in pairs
              if not LOADERS[loader].gives_reference_batches(AUGMENTATIONS[augment])}
    assert differ == {("dali", "autoaugment_cutout")}


@pytest.mark.parametrize("augment, refused", [
    ("autoaugment_cutout", {("dali", "auto"), ("dali", "gpu"), ("dali", "torch")}),
    ("crop_flip", set()),
    ("none", set()),
])
def test_same_batches(augment, refused):
    for loader in LOADERS:
        for other in LOADERS:
            differ = (loader, other) in refused or (other, loader) in refused
            assert same_batches(loader, other, augment) == (not differ), (loader, other, augment)


def test_a_builder_table_must_cover_exactly_its_rows():
    check_builders({"gpu": 1, "dali": 2, "torch": 3}, LOADER_KINDS, "here")
    with pytest.raises(RuntimeError, match=r"here: rows without a builder \['torch'\], builders without a row \[\]"):
        check_builders({"gpu": 1, "dali": 2}, LOADER_KINDS, "here")
    with pytest.raises(RuntimeError, match=r"builders without a row \['fast'\]"):
        check_builders({"gpu": 1, "dali": 2, "torch": 3, "fast": 4}, LOADER_KINDS, "here")
    from ratio_fast.data.loaders import KIND_CLASSES

    assert tuple(KIND_CLASSES) == LOADER_KINDS  # the one real builder table, checked at its import too


def test_flags_take_their_choices_and_help_from_the_tables():
    from ratio_fast.config import about

    fields = {field.name: about(field) for field in TrainConfig.__dataclass_fields__.values()}
    assert fields["loader"].choices == tuple(LOADERS) == ("auto", "gpu", "dali", "torch")
    assert fields["augment"].choices == tuple(AUGMENTATIONS)
    for name, row in {**LOADERS, **AUGMENTATIONS}.items():
        assert f"{name}: {row.help}" in fields["loader" if name in LOADERS else "augment"].help


def test_every_builder_table_covers_exactly_its_rows():
    """What "Adding to ratio-fast" promises: each table with code behind its rows has one builder
    per row (each module also checks this at its import)."""
    from ratio_fast.attacks import named
    from ratio_fast.evaluation import evaluate, export
    from ratio_fast.models import BUILDERS as architectures
    from ratio_fast.training.speed import AMP_DTYPES

    assert list(named.BUILDERS) == list(choices.TRAINING_ATTACKS) == ["pgd", "apgd"]
    assert list(evaluate.BUILDERS) == list(choices.EVAL_ATTACKS) == ["apgd-ce", "apgd-t"]
    assert set(choices.TRAINING_ATTACKS) | set(choices.EVAL_ATTACKS) == set(choices.ATTACKS)
    assert set(architectures) == set(choices.ARCHITECTURES)
    assert set(AMP_DTYPES) == set(choices.AMP_TYPES)
    assert set(export.WEIGHTS_IN_STATE) == set(choices.WEIGHTS)
