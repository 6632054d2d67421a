"""bench/training_types_table.py's pieces, by content: the types it trains are choices.MODES' rows,
every type gets the same settings (read back through the CLI's own parser), a table row is built
from an eval.json as `ratio-fast eval` writes it, and a type already evaluated is not run again."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ratio_fast.choices import MODES
from ratio_fast.cli.main import TRAIN_SETTINGS, build_parser
from ratio_fast.cli.parser import config_from_args
from ratio_fast.config import EvalConfig, TrainConfig
from ratio_fast.evaluation.evaluate import EvalState, batch_source, evaluate_model
from ratio_fast.models import create_model


@pytest.fixture
def table(bench_module):
    return bench_module("training_types_table")


def test_the_types_are_the_rows_of_modes(table, monkeypatch):
    assert table.training_types() == list(MODES)  # every row, in the table's order
    monkeypatch.setattr(table, "MODES", {"b": None, "a": None})  # read from the table, not a list of its own
    assert table.training_types() == ["b", "a"]


def train_config(args: list[str]) -> TrainConfig:
    """The TrainConfig `ratio-fast train ARGS` runs with (as cli/main.py's _run_train builds it)."""
    parsed = vars(build_parser().parse_args(args))
    return TrainConfig(**{name: value for name, value in parsed.items() if name in TRAIN_SETTINGS})


def test_every_type_trains_and_is_evaluated_with_the_same_settings(table, tmp_path):
    budget = table.Budget(epochs=3, batch_size=64, seed=7, synthetic_size=640, robust_samples=50, ood_samples=40)
    configs = {mode: train_config(table.train_args(mode, budget, tmp_path / mode)) for mode in MODES}
    for mode, config in configs.items():
        assert config.mode == mode
        assert (config.dataset, config.arch, config.epochs, config.batch_size, config.seed, config.synthetic_size) \
            == ("synthetic", "tiny", 3, 64, 7, 640)
    without_mode = [dataclasses.replace(config, mode="ratio") for config in configs.values()]
    assert all(config == without_mode[0] for config in without_mode)  # --mode is the only difference

    parser = build_parser()
    evals = [parser.parse_args(table.eval_args(budget, tmp_path / mode)) for mode in MODES]
    settings = [config_from_args(EvalConfig, args) for args in evals]
    assert all(s == settings[0] for s in settings)
    s = settings[0]
    assert (s.robust_samples, s.ood_samples, s.seed, s.ood) == (50, 40, 7, table.BUILT_IN)
    assert (s.attacks, s.steps, s.ood_steps) == (EvalConfig.attacks, EvalConfig.steps, EvalConfig.ood_steps)
    assert [(args.checkpoint, args.out) for args in evals] == [
        (str(tmp_path / mode), str(tmp_path / mode / f"eval-{budget.eval_key()}")) for mode in MODES]


def test_the_keys_name_what_training_and_evaluation_depend_on(table):
    budget = table.Budget()
    assert (budget.training_key(), budget.eval_key()) == (table.Budget().training_key(), table.Budget().eval_key())
    training = [{"epochs": 2}, {"batch_size": 64}, {"synthetic_size": 640}, {"arch": "resnet18"}]
    evaluation = [{"robust_samples": 7}, {"ood_samples": 9}, {"ood": ("uniform-noise",)}]
    both = [{"seed": 1}, {"device": "cuda"}]
    for changes, trains, evaluates in ((training, True, False), (evaluation, False, True), (both, True, True)):
        for change in changes:
            other = dataclasses.replace(budget, **change)
            assert (other.training_key() != budget.training_key(), other.eval_key() != budget.eval_key()) == \
                (trains, evaluates), change
    assert set(table.TRAINING_FIELDS) | set(table.EVAL_FIELDS) == {f.name for f in dataclasses.fields(budget)}


HAND_MADE = {  # the fields of an eval.json the table reads, with numbers whose row is worked out by hand
    "samples": 1024, "clean_accuracy": 0.9375,
    "robust": {"eps": 0.5, "steps": 100, "targets": 9, "samples": 200, "attacks": ["apgd-ce", "apgd-t"],
               "apgd-ce": 0.6, "apgd-t": 0.5, "all": 0.5},
    "ood": {"uniform-noise": {"auroc": 0.9, "worst_case_auroc": 0.3, "fpr95": 0.1},
            "smooth-noise": {"auroc": 0.8, "worst_case_auroc": 0.2, "fpr95": 0.2},
            "permuted-pixels": {"auroc": 0.7, "worst_case_auroc": 0.1, "fpr95": 0.3}},
}


def test_a_row_from_a_hand_made_eval_json(table):
    s = table.summary(HAND_MADE)
    # robust: after every attack ('all'), 100 of 200; Wilson at 95 %: 0.5 -+ 1.96 sqrt(0.25 / 200 + 1.96^2 / 4 / 200^2)
    # / (1 + 1.96^2 / 200) = 0.5 -+ 0.0686; AUROC: the mean over the three sets
    assert s["robust_accuracy"] == 0.5 and s["robust_samples"] == 200
    assert s["robust_interval_95"] == pytest.approx([0.4314, 0.5686], abs=1e-4)
    assert s["auroc"] == pytest.approx(0.8) and s["worst_case_auroc"] == pytest.approx(0.2)
    assert s["ood"]["smooth-noise"] == {"auroc": 0.8, "worst_case_auroc": 0.2}
    assert table.table_line("acet", s) == "| `acet` | 93.8 % | 50.0 % [43.1, 56.9] | 80.0 % | 20.0 % |"
    assert table.TABLE_HEADER.splitlines()[0].count("|") == table.table_line("acet", s).count("|")


def test_a_row_from_what_eval_writes(table, synthetic_split, tmp_path):
    """summary() reads the keys evaluate_model writes (a tiny untrained model, 3-step attacks)."""
    x, y = synthetic_split["test"]
    images = (x[:16].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    test = batch_source(images, y[:16].numpy(), batch_size=16, device="cpu")
    ood = {name: batch_source(images[::-1].copy(), None, batch_size=16, device="cpu", limit=8) for name in "ab"}
    settings = EvalConfig(eps=0.5, steps=2, targets=2, robust_samples=8, ood_steps=2, batch_size=16)
    torch.manual_seed(0)
    results = evaluate_model(create_model("tiny").eval(), test, ood, settings, EvalState(tmp_path / "s.pt", {}))
    s = table.summary(json.loads(json.dumps(results)))
    assert (s["clean_accuracy"], s["robust_accuracy"], s["robust_samples"]) == \
        (results["clean_accuracy"], results["robust"]["all"], 8)
    for key in ("auroc", "worst_case_auroc"):
        assert s[key] == pytest.approx((results["ood"]["a"][key] + results["ood"]["b"][key]) / 2)


def test_a_type_with_an_eval_json_is_not_run_again(table, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(table, "run_logged", lambda args, log: ran.append(args) or 1.0)
    done, budget = tmp_path / "ceda", table.Budget()
    table.eval_dir(budget, done).mkdir(parents=True)
    (table.eval_dir(budget, done) / "eval.json").write_text(json.dumps(HAND_MADE))
    results, what = table.measure("ceda", budget, done)
    assert results == HAND_MADE and what["reused"] and ran == []


def test_a_killed_run_continues(table, tmp_path, monkeypatch):
    run_dir = tmp_path / "at"

    def run_logged(args, log: Path):
        ran.append(args)
        if args[0] == "eval":
            (table.eval_dir(budget, run_dir) / "eval.json").write_text(json.dumps(HAND_MADE))
        return 2.0

    ran = []
    monkeypatch.setattr(table, "run_logged", run_logged)
    budget = table.Budget()
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"")  # what a killed training leaves
    results, what = table.measure("at", budget, run_dir)
    assert ran == [table.train_args("at", budget, run_dir) + ["--resume"], table.eval_args(budget, run_dir)]
    assert results == HAND_MADE and not what["reused"] and (what["train_s"], what["eval_s"]) == (2.0, 2.0)
