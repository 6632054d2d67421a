"""eval --quick (a preset; flags given with it win) and one progress line with an ETA over the
whole evaluation (and over all of counterfactuals' APGD steps)."""
import json
import re

from ratio_fast import TrainConfig
from ratio_fast.cli.main import main
from ratio_fast.config import QUICK_EVAL, EvalConfig
from ratio_fast.training.checkpoint import save_checkpoint


def write_checkpoint(path, model):
    state = model.state_dict()
    save_checkpoint(path, {"config": TrainConfig(arch="tiny", dataset="synthetic").to_dict(),
                           "trainer": {"model": state, "ema": {"model": state}, "steps_done": 40}, "rng": {}})


def test_quick_sets_the_preset_and_given_flags_win(trained_tiny, tmp_path, capsys):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    assert main(["eval", str(tmp_path / "checkpoint.pt"), "--quick", "--device", "cpu", "--samples", "64",
                 "--steps", "2", "--ood-steps", "2", "--robust-samples", "32", "--ood", "uniform-noise",
                 "--batch-size", "32"]) == 0
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert results["settings"]["targets"] == QUICK_EVAL["targets"] == 3  # from the preset
    assert results["ood"]["uniform-noise"]["samples"] == QUICK_EVAL["ood_samples"]
    assert results["settings"]["steps"] == 2 and results["robust"]["samples"] == 32  # given: they win
    assert results["ood"]["uniform-noise"]["worst_case_steps"] == 2
    # One progress line over the whole evaluation, in units of work (a clean batch 1, an attack
    # step 3): 2 clean batches, 1 batch of APGD-CE (3 x 2) and APGD-T (3 x 2 x 3 targets), 16 OOD
    # batches (500 of 32) clean and worst case (1 + 3 x 2).
    err = capsys.readouterr().err
    done, total = map(int, re.search(r"^evaluation (\d+)/(\d+) \(100%\).*eta 0s", err, re.M).groups())
    assert done == total == 2 * 1 + 1 * (6 + 18) + 16 * (1 + 6)


def test_quick_is_a_setting_whose_preset_yields_to_the_named_settings():
    """EvalConfig.quickened, what eval --quick and rf.evaluate(quick=True) both apply."""
    plain = EvalConfig(steps=7)
    assert plain.quickened(set()) == plain  # without quick: as it is
    quick = EvalConfig(quick=True, steps=7).quickened({"quick", "steps"})
    assert quick.steps == 7 and quick.targets == QUICK_EVAL["targets"] != EvalConfig().targets
    assert all(getattr(quick, name) == value for name, value in QUICK_EVAL.items() if name != "steps")


def test_counterfactuals_show_progress_over_every_step(trained_tiny, tmp_path, capsys):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    assert main(["counterfactuals", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--images", "0,1,2",
                 "--radii", "0.5,1", "--steps", "5", "--batch-size", "4"]) == 0  # 2 images x 2 radii per call: 2 calls
    err = capsys.readouterr().err
    assert re.search(r"^counterfactuals 10/10 \(100%\) [\d.]+ step/s", err, re.M), err
