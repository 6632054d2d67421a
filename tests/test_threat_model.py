"""The threat model (--norm): per-norm defaults declared once in choices.NORMS, an explicit radius
wins, old checkpoints read as L2, a resume refuses another norm, and a synthetic run trains,
evaluates (with AutoAttack's standard version, budgets cut as in test_evaluation_evaluate.py)
and exports in L-infinity."""
import functools
import json

import pytest
import torch
from safetensors import safe_open

from ratio_fast.choices import NORMS
from ratio_fast.cli.main import main
from ratio_fast.config import CounterfactualsConfig, EvalConfig, TrainConfig
from ratio_fast.evaluation.counterfactuals import counterfactuals

LINF = NORMS["linf"]


def test_train_defaults_follow_the_norm_and_given_values_win():
    l2, linf = TrainConfig(), TrainConfig(norm="linf")
    assert (l2.norm, l2.eps_in, l2.eps_out, l2.step_size_in, l2.step_size_out) == ("l2", 0.5, 1.0, 0.1, 0.1)
    assert (linf.eps_in, linf.eps_out, linf.step_size_in, linf.step_size_out) == (8 / 255, 16 / 255, 2 / 255, 2 / 255)
    given = TrainConfig(norm="linf", eps_in=4 / 255, step_size_out=1 / 255)
    assert (given.eps_in, given.eps_out, given.step_size_in, given.step_size_out) == (
        4 / 255, 16 / 255, 2 / 255, 1 / 255)
    assert TrainConfig.from_dict(given.to_dict()) == given


def test_a_checkpoint_from_before_the_norm_reads_as_l2():
    saved = TrainConfig().to_dict()
    del saved["norm"]
    config = TrainConfig.from_dict(saved)
    assert (config.norm, config.eps_in, config.eps_out) == ("l2", 0.5, 1.0)


def test_eval_and_counterfactuals_take_the_runs_norm_unless_told():
    run = TrainConfig(norm="linf", eps_in=4 / 255)
    s = EvalConfig().for_run(run)
    assert (s.norm, s.eps, s.ood_eps) == ("linf", 4 / 255, 16 / 255)  # the run's radius, the norm's OOD radius
    s = EvalConfig(norm="l2").for_run(run)
    assert (s.norm, s.eps, s.ood_eps) == ("l2", 0.5, 1.0)  # the run's radius is in another norm
    s = EvalConfig(eps=0.01, ood_eps=0.02).for_run(run)
    assert (s.eps, s.ood_eps) == (0.01, 0.02)
    assert EvalConfig().for_run().norm == "l2"  # no run: the paper's threat model
    assert CounterfactualsConfig().for_run(run).radii == LINF.radii
    assert CounterfactualsConfig(radii=(0.1,)).for_run(run).radii == (0.1,)


def test_linf_counterfactuals_stay_in_their_boxes(trained_tiny, synthetic_split):
    x, y = synthetic_split["test"]
    x, y = x[:2], y[:2]
    targets = (y + 1) % 10
    radii = (4 / 255, 16 / 255)
    adv, conf = counterfactuals(trained_tiny, x, targets, radii, steps=5, batch_size=8, norm="linf")
    largest = (adv - x[:, None]).flatten(2).abs().amax(2)  # (images, radii)
    assert (largest <= torch.tensor(radii) + 1e-6).all()
    assert (largest[:, 1] > 15 / 255).all(), "the larger box is used"
    assert conf.shape == (2, 2)
    # The random start (--start random, the default) is AutoAttack's: in each box, near its surface
    # (clipping to [0,1] may pull the farthest pixel in), not the image.
    start, _ = counterfactuals(trained_tiny, x, targets, radii, steps=0, norm="linf", seed=3)
    largest = (start - x[:, None]).flatten(2).abs().amax(2)
    assert (largest <= torch.tensor(radii) + 1e-6).all() and (largest > 0.5 * torch.tensor(radii)).all()
    assert ((start >= 0) & (start <= 1)).all()


FAST = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "64",
        "--batch-size", "32", "--steps-in", "2", "--steps-out", "2", "--eval-samples", "16", "--epochs", "1"]


@pytest.fixture
def cheap_autoattack(monkeypatch):
    """The real package with CI budgets for Square and FAB (as test_evaluation_evaluate.py cuts them);
    records the norm each evaluation was built with."""
    import ratio_fast.evaluation.autoattack_package as package

    norms = []
    original = package.AutoAttackPackage

    def cut(*args, **kwargs):
        reference = original(*args, square_queries=50, fab_iterations=5, **kwargs)
        norms.append(reference.norm.autoattack)
        return reference
    monkeypatch.setattr(package, "AutoAttackPackage", cut)
    return norms


def test_linf_run_trains_evaluates_with_autoattack_and_exports(tmp_path, capsys, cheap_autoattack):
    run = tmp_path / "run"
    assert main([*FAST, "--norm", "linf", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["norm"], saved["eps_in"], saved["eps_out"], saved["step_size_in"]) == (
        "linf", 8 / 255, 16 / 255, 2 / 255)
    assert "robust(L-infinity 0.03137" in capsys.readouterr().out

    # The norm is part of the computation: a resume in another norm is refused in one line.
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--norm", "l2", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "--norm: checkpoint linf, given l2" in err and "Traceback" not in err

    argv = ["eval", str(run / "checkpoint.pt"), "--device", "cpu", "--samples", "8", "--steps", "5",
            "--targets", "3", "--autoattack", "--ood", "uniform-noise", "--ood-samples", "8", "--ood-steps", "2",
            "--batch-size", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    results = json.loads((run / "eval" / "eval.json").read_text())
    robust = results["robust"]
    assert (robust["norm"], robust["eps"]) == ("linf", 8 / 255)  # the run's threat model
    assert cheap_autoattack == ["Linf"] and robust["autoattack_version"].startswith("AutoAttack standard")
    assert robust["all"] <= min(robust["autoattack"], robust["apgd-t"])
    worst = results["ood"]["uniform-noise"]
    assert (worst["worst_case_norm"], worst["worst_case_eps"]) == ("linf", 16 / 255)
    assert "L-infinity 0.0313725, 5 steps" in out and "(L-infinity 0.0627451, 2 steps)" in out

    assert main(["export", str(run / "checkpoint.pt"), "--out", str(tmp_path / "export")]) == 0
    assert "threat model Linf, eps 0.03137" in capsys.readouterr().out
    with safe_open(tmp_path / "export" / "model.safetensors", "pt") as exported:
        metadata = exported.metadata()
    assert (metadata["threat_model"], float(metadata["eps"])) == ("Linf", 8 / 255)


@pytest.mark.parametrize("config_file", ["configs/ratio-cifar10-wrn34.json", "run config.json"])
def test_a_config_files_radii_do_not_cross_into_another_norm(tmp_path, capsys, config_file):
    """--config with L2 radii and --norm linf on the command line: refused in one line, not an
    L-infinity box of 0.5; the radii given on the command line as well, it runs."""
    from pathlib import Path

    if config_file == "run config.json":  # a finished run's settings, every radius written out
        path = tmp_path / "config.json"
        path.write_text(json.dumps(TrainConfig(arch="tiny", dataset="synthetic").to_dict()))
    else:
        path = Path(__file__).parent.parent / config_file
    assert main(["train", "--config", str(path), "--norm", "linf", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ratio-fast: error: --norm linf: --config {path} sets --eps-in, "
                                                   "--eps-out, --step-size-in, --step-size-out for l2;"), err
    assert not (tmp_path / "run").exists()

    small = tmp_path / "small.json"
    small.write_text(json.dumps({"eps_in": 0.5, "step_size_in": 0.1}))
    assert main([*FAST, "--config", str(small), "--norm", "linf", "--eps-in", "0.02", "--step-size-in", "0.005",
                 "--max-steps", "1", "--out", str(tmp_path / "given")]) == 0
    saved = json.loads((tmp_path / "given" / "config.json").read_text())
    assert (saved["norm"], saved["eps_in"], saved["step_size_in"], saved["eps_out"]) == ("linf", 0.02, 0.005, 16 / 255)
