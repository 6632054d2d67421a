"""The data settings of a run: --augment, the repeatable --out-exclude FILE[:0|:1], the shipped
configs/ratio-cifar10-wrn34.json (the authors' command), and config.json files of earlier versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ratio_fast.cli.main import build_parser
from ratio_fast.config import TrainConfig
from ratio_fast.cli.config_file import read_config_file
from ratio_fast.data import load_out_distribution
from ratio_fast.errors import UserError

SHIPPED = Path(__file__).resolve().parent.parent / "configs" / "ratio-cifar10-wrn34.json"

# The command that trained RobustBench's Augustin2020Adversarial_34_10 (the authors' README), with
# the defaults of their run_file_helpers.py, in ratio-fast's terms:
#   --net wideresnet34x10 --augm autoaugment_cutout --id_steps 10 --od_steps 20 --train_type advacet
#   --epochs 300 --ema True --ema_decay 0.999 --dataset cifar10 --schedule cosine --l2_eps 0.5
#   --od_eps_factor 2   (defaults: --lr 0.1 --bs 128 --decay 5e-4 --momentum 0.9 --od_weight 1,
#   ArgminPGD step 0.1 for both attacks, --od_dataset tinyImages --exclude_cifar True), and --gpu 0 1:
#   nn.DataParallel on two GPUs, so BatchNorm over two groups; --test_epochs 10; fp32 (their
#   --mixed_precision defaults to off)
AUTHORS = dict(arch="wrn34", augment="autoaugment_cutout", steps_in=10, steps_out=20, mode="ratio", epochs=300,
               ema_decay=0.999, dataset="cifar10", eps_in=0.5, eps_out=1.0, lr=0.1, batch_size=128,
               weight_decay=5e-4, momentum=0.9, lam=1.0, attack="pgd", step_size_in=0.1, step_size_out=0.1,
               bn_groups=2, test_every=10, amp=False)
# Their _load_cifar_exclusion_idcs with exclude_cifar and exclude_cifar10_1: the Outlier Exposure
# list (1-based, "- 1") and their own lists (0-based).
AUTHORS_LISTS = {"80mn_cifar_idxs.txt": 1, "80mn_cifar10_test_idxs.txt": 0, "80mn_cifar100_test_idxs.txt": 0,
                 "80mn_cifar10_train_idxs.txt": 0, "80mn_cifar100_train_idxs.txt": 0, "80mn_cifar101_idxs.txt": 0}


def test_shipped_config_is_the_authors_command():
    config = TrainConfig(**read_config_file(SHIPPED))
    assert {name: getattr(config, name) for name in AUTHORS} == AUTHORS
    assert config.out_data.endswith("tiny_images.bin")
    lists = {Path(item.rsplit(":", 1)[0]).name: int(item.rsplit(":", 1)[1]) for item in config.out_exclude}
    assert lists == AUTHORS_LISTS


def test_shipped_config_runs_on_a_synthetic_stand_in(tmp_path):
    """The shipped file with only its data and model swapped for the synthetic set and the tiny model
    (and a small batch): every other flag as shipped (fp32, --bn-groups 2, --test-every 10, the
    authors' augmentation, 10 / 20 attack steps) trains 3 steps; epoch 1 is tested, the cut-short
    epoch 2 is not."""
    from ratio_fast.cli.main import main

    swapped = dict(dataset="synthetic", arch="tiny", out_data=None, out_exclude=[], data_dir=str(tmp_path / "data"),
                   batch_size=32, synthetic_size=64)
    shipped = json.loads(SHIPPED.read_text())
    stand_in = tmp_path / "stand_in.json"
    stand_in.write_text(json.dumps({**shipped, **swapped}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(stand_in), "--device", "cpu", "--max-steps", "3", "--eval-samples", "32",
                 "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert {name: saved[name] for name in shipped if name not in swapped} == \
           {name: value for name, value in shipped.items() if name not in swapped}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["steps"], "test_clean_acc" in r) for r in records] == [(1, 2, True), (2, 1, False)]
    assert all(np.isfinite(r["loss"]) for r in records)


def test_shipped_exclusion_lists_leave_out_what_the_authors_leave_out(tmp_path, monkeypatch):
    """The config's six lists against a stand-in Tiny Images file: the same rows go as in the authors' code."""
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(**read_config_file(SHIPPED))
    rows = 200
    stand_in = Path(config.out_data).with_name("stand_in.bin")  # the published name must hold every row
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    np.zeros((rows, 3072), np.uint8).tofile(stand_in)
    rng = np.random.default_rng(0)
    authors_excluded = set()
    for item in config.out_exclude:
        path, base = item.rsplit(":", 1)
        numbers = rng.choice(np.arange(int(base), rows + int(base)), size=15, replace=False)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(f"{n}\n" for n in numbers))
        authors_excluded |= {int(n) - 1 for n in numbers} if Path(path).name == "80mn_cifar_idxs.txt" \
            else {int(n) for n in numbers}
    source = load_out_distribution(str(stand_in), config.data_dir, in_name="cifar10", exclude=config.out_exclude)
    assert len(source) == rows - len(authors_excluded)
    kept = source.source_rows(np.arange(len(source)))
    assert set(kept.tolist()) == set(range(rows)) - authors_excluded


def test_out_exclude_repeats_and_replaces_the_config_lists(tmp_path):
    parse = build_parser().parse_args
    args = parse(["train", "--out-exclude", "a.txt", "--out-exclude", "b.txt:0"])
    assert args.out_exclude == ["a.txt", "b.txt:0"] and TrainConfig().out_exclude == []
    from_file = build_parser(TrainConfig(out_exclude=["x.txt:1", "y.txt:0"])).parse_args
    assert from_file(["train"]).out_exclude == ["x.txt:1", "y.txt:0"]  # the file's lists
    assert from_file(["train", "--out-exclude", "z.txt"]).out_exclude == ["z.txt"]  # flags win, not append
    assert parse(["train"]).augment == "autoaugment_cutout"
    assert parse(["train", "--augment", "crop_flip"]).augment == "crop_flip"


@pytest.mark.parametrize("flag", ["--cutout", "--no-augment"])
def test_removed_flags_name_their_replacement(flag, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", flag])
    assert info.value.code == 2 and f"{flag} was replaced by --augment" in capsys.readouterr().err


def test_config_files_of_earlier_versions_load(tmp_path):
    """augment true / false meant crop_flip / none; out_exclude was one 1-based file or null."""
    old = TrainConfig().to_dict()
    for augment, expected in ((True, "crop_flip"), (False, "none")):
        for exclude, lists in ((None, []), ("80mn_cifar_idxs.txt", ["80mn_cifar_idxs.txt"])):
            path = tmp_path / "config.json"
            path.write_text(json.dumps({**old, "augment": augment, "cutout": False, "out_exclude": exclude}))
            settings = read_config_file(path)
            assert (settings["augment"], settings["out_exclude"]) == (expected, lists)
            assert "cutout" not in settings
            assert TrainConfig.from_dict({**old, "augment": augment, "cutout": False}).augment == expected
    path.write_text(json.dumps({**old, "augment": True, "cutout": True}))
    with pytest.raises(UserError, match=r"--config .*config.json: cutout was replaced by --augment autoaugment_cutout"):
        read_config_file(path)
    with pytest.raises(UserError, match="--augment must be one of autoaugment_cutout, crop_flip, none"):
        TrainConfig(augment="autoaugment").validate()


@pytest.mark.parametrize("augment, before, after, refused", [
    ("autoaugment_cutout", "auto", "torch", False),  # both give the reference batches
    ("autoaugment_cutout", "gpu", "auto", False),
    ("autoaugment_cutout", "auto", "dali", True),  # DALI's AutoAugment is not PIL's
    ("autoaugment_cutout", "dali", "torch", True),
    ("crop_flip", "gpu", "dali", False),  # without AutoAugment DALI's batches are the reference's
    ("none", "dali", "auto", False),
])
def test_resume_refuses_a_loader_change_that_changes_the_batches(augment, before, after, refused):
    from ratio_fast.config import resume_differences

    saved = TrainConfig(arch="tiny", dataset="synthetic", augment=augment, loader=before)
    allowed, refusals = resume_differences(saved, TrainConfig(**{**saved.to_dict(), "loader": after}))
    line = f"--loader: checkpoint {before}, given {after}"
    if refused:
        assert (allowed, refusals) == ([], [f"{line} (not the same batches with --augment {augment})"])
    else:
        assert (allowed, refusals) == ([line], [])
