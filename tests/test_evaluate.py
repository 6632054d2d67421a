"""Evaluation: OOD metrics on hand-made cases, the resumable evaluation, `ratio-fast eval`."""
import itertools
import json
import sys
import types

import numpy as np
import pytest
import torch

from ratio_fast.checkpoint import save_checkpoint
from ratio_fast.cli import main
from ratio_fast.config import TrainConfig
from ratio_fast.errors import UserError
from ratio_fast.evaluate import (BatchSource, EvalSettings, EvalState, batch_source, evaluate_model, format_table,
                                 run_part)
from ratio_fast.ood import auroc, fpr_at_tpr, max_confidence, ood_metrics


# --- OOD metrics -------------------------------------------------------------------------------

def brute_force_auroc(s_in, s_out):
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(s_in, s_out)]
    return sum(pairs) / len(pairs)


def test_auroc_known_answers():
    assert auroc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0  # perfect separation
    assert auroc([0.1, 0.2], [0.9, 0.8, 0.7]) == 0.0  # perfectly wrong
    assert auroc([0.9, 0.8, 0.3], [0.5, 0.1]) == pytest.approx(5 / 6)
    assert auroc([0.5, 0.5], [0.5]) == 0.5  # all tied
    same = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert auroc(same, same) == pytest.approx(0.5)  # identical distributions, exactly by symmetry


def test_auroc_matches_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        s_in = torch.randint(0, 6, (37,), generator=g).tolist()  # few values: many ties
        s_out = torch.randint(0, 6, (23,), generator=g).tolist()
        assert auroc(s_in, s_out) == pytest.approx(brute_force_auroc(s_in, s_out))


def test_auroc_of_iid_samples_is_about_half():
    g = torch.Generator().manual_seed(2)
    assert abs(auroc(torch.rand(4000, generator=g), torch.rand(4000, generator=g)) - 0.5) < 0.03


def test_fpr_at_95_tpr_known_answers():
    s_in = torch.arange(1, 101).double()  # the threshold keeping 95 of 100 is 6
    assert fpr_at_tpr(s_in, [5.5, 6.0, 7.0, 100.0]) == 0.75
    assert fpr_at_tpr(s_in, [0.0, 1.0, 5.9]) == 0.0
    assert fpr_at_tpr([0.9, 0.8], [0.1, 0.2]) == 0.0  # perfect separation
    assert fpr_at_tpr([0.5] * 10, [0.5] * 10) == 1.0  # all tied: whatever passes 95 % passes all


def test_ood_metrics_and_bad_inputs():
    m = ood_metrics([0.9, 0.95], [0.2, 0.4])
    assert m == {"auroc": 1.0, "fpr95": 0.0, "mean_max_conf": pytest.approx(0.3)}
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [0.5])
    with pytest.raises(ValueError, match="finite"):
        auroc([float("nan")], [0.5])
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    assert torch.allclose(max_confidence(logits), torch.tensor([0.5, 1 / (1 + np.exp(-10))]).float())


# --- the resumable evaluation --------------------------------------------------------------------

def uint8_images(x):
    return (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


@pytest.fixture
def sources(synthetic_split):
    x, y = synthetic_split["test"]
    test = BatchSource(uint8_images(x[:96]), y[:96].numpy(), batch_size=32, device="cpu")
    ood = batch_source(uint8_images(synthetic_split["out"]), None, batch_size=32, device="cpu", limit=64)
    return test, {"blobs": ood}


SMALL = EvalSettings(eps=0.5, steps=3, targets=2, robust_samples=64, ood_eps=1.0, ood_steps=3, batch_size=32)


def test_batch_source_batches_and_prefix(sources):
    test, _ = sources
    assert test.batches == 3
    head = test.first(40)
    assert head.batches == 2 and head.size == 40
    x, y = head.batch(1)
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,) and x.dtype == torch.float32
    assert torch.equal(x, test.batch(1)[0][:8])


def test_evaluate_model_metrics(trained_tiny, sources, tmp_path):
    test, ood = sources
    results = evaluate_model(trained_tiny, test, ood, SMALL, EvalState(tmp_path / "state.pt", {"id": 1}))
    assert results["clean_accuracy"] > 0.9
    robust = results["robust"]
    assert robust["samples"] == 64
    assert robust["all"] <= min(robust["apgd-ce"], robust["apgd-t"]) <= results["clean_accuracy"] + 1e-9
    blobs = results["ood"]["blobs"]
    assert blobs["samples"] == 64
    assert 0.0 <= blobs["worst_case_auroc"] <= blobs["auroc"] <= 1.0
    assert blobs["worst_case_mean_max_conf"] > blobs["mean_max_conf"]
    json.dumps(results)  # JSON-ready
    table = format_table(results)
    assert "worst-case AUROC" in table and "apgd-t" in table


def test_killed_evaluation_resumes_with_the_same_numbers(trained_tiny, sources, tmp_path, monkeypatch):
    import ratio_fast.evaluate as ev

    test, ood = sources
    settings = EvalSettings(eps=1.0, steps=3, attacks=("apgd-ce",), ood_steps=2, batch_size=32)
    whole = evaluate_model(trained_tiny, test, ood, settings, EvalState(tmp_path / "a.pt", {"id": 1}))

    attacked = []  # one entry per attacked batch actually computed

    class Killed(Exception):
        pass

    def attacked_correct(kill_after):
        def wrap(model, attack):
            measure = original(model, attack)

            def counted(x, y, g):
                if kill_after is not None and len(attacked) == kill_after:
                    raise Killed  # the process dies in the middle of the attack part
                attacked.append(1)
                return measure(x, y, g)
            return counted
        return wrap

    original = ev._attacked_correct
    monkeypatch.setattr(ev, "_attacked_correct", attacked_correct(kill_after=1))
    with pytest.raises(Killed):
        evaluate_model(trained_tiny, test, ood, settings, EvalState(tmp_path / "b.pt", {"id": 1}, save_interval=0))
    saved = torch.load(tmp_path / "b.pt", weights_only=True)["parts"]
    assert sorted(len(batches) for batches in saved.values()) == [1, 3], "clean done, one attacked batch kept"

    attacked.clear()
    monkeypatch.setattr(ev, "_attacked_correct", attacked_correct(kill_after=None))
    resumed = evaluate_model(trained_tiny, test, ood, settings, EvalState(tmp_path / "b.pt", {"id": 1}))
    assert len(attacked) == test.batches - 1, "only the attacked batches not saved yet are computed"
    assert resumed == whole


def test_state_of_another_evaluation_is_refused(tmp_path):
    state = EvalState(tmp_path / "s.pt", {"checkpoint": "a"})
    state.put("p", 0, {"v": torch.ones(2)})
    state.save()
    assert EvalState(tmp_path / "s.pt", {"checkpoint": "a"}).done("p", 0)
    with pytest.raises(UserError, match="another evaluation"):
        EvalState(tmp_path / "s.pt", {"checkpoint": "b"})
    (tmp_path / "bad.pt").write_bytes(b"not a state")
    with pytest.raises(UserError, match="unreadable"):
        EvalState(tmp_path / "bad.pt", {})


def test_run_part_seeds_each_batch_independently_of_order(sources, tmp_path):
    test, _ = sources

    def measure(x, y, g):
        return {"r": torch.rand(1, generator=g)}

    a = run_part(EvalState(tmp_path / "a.pt", {}), "noise", test, measure, seed=3)["r"]
    state = EvalState(tmp_path / "b.pt", {})
    state.put("noise", 2, {"r": a[2:]})  # batch 2 "from an earlier run"
    b = run_part(state, "noise", test, measure, seed=3)["r"]
    assert torch.equal(a, b) and len(set(a.tolist())) == 3


def test_settings_validation():
    with pytest.raises(UserError, match="--attacks"):
        EvalSettings(attacks=("fgsm",)).validate()
    with pytest.raises(UserError, match="--eps"):
        EvalSettings(eps=-1).validate()
    with pytest.raises(UserError, match="--batch-size"):
        EvalSettings(batch_size=0).validate()


# --- AutoAttack: optional third-party package ----------------------------------------------------

def test_autoattack_missing_gives_install_hint(trained_tiny, sources, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "autoattack", None)  # import fails as if not installed
    test, _ = sources
    settings = EvalSettings(attacks=(), autoattack=True, batch_size=32)
    with pytest.raises(UserError, match="pip install git\\+https://github.com/fra31/auto-attack"):
        evaluate_model(trained_tiny, test, {}, settings, EvalState(tmp_path / "s.pt", {}))


def test_autoattack_is_called_with_the_standard_l2_version(trained_tiny, sources, tmp_path, monkeypatch):
    seen = []

    class FakeAutoAttack:  # records how ratio-fast drives the package; "attacks" by zeroing the image
        def __init__(self, model, norm, eps, version, device, verbose, seed):
            seen.append((norm, eps, version, verbose))

        def run_standard_evaluation(self, x, y, bs):
            assert bs == x.shape[0]
            return torch.zeros_like(x)

    monkeypatch.setitem(sys.modules, "autoattack", types.SimpleNamespace(AutoAttack=FakeAutoAttack))
    test, _ = sources
    settings = EvalSettings(eps=0.5, attacks=(), autoattack=True, robust_samples=64, batch_size=32)
    results = evaluate_model(trained_tiny, test, {}, settings, EvalState(tmp_path / "s.pt", {}))
    assert seen and all(call == ("L2", 0.5, "standard", False) for call in seen)
    with torch.no_grad():
        zero_pred = trained_tiny(torch.zeros(1, 3, 32, 32)).argmax(1)
    labels = torch.cat([test.batch(i)[1] for i in range(2)])
    assert results["robust"]["autoattack"] == pytest.approx((labels == zero_pred).double().mean().item())


# --- the command ----------------------------------------------------------------------------------

def write_checkpoint(path, model, arch="tiny", dataset="synthetic"):
    state = model.state_dict()
    save_checkpoint(path, {"config": TrainConfig(arch=arch, dataset=dataset).to_dict(),
                           "trainer": {"model": state, "ema": {"model": state, "updates": 1}}, "rng": {}})


def test_eval_command_writes_json_and_table_and_resumes(trained_tiny, tmp_path, capsys):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    argv = ["eval", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--samples", "128", "--steps", "2",
            "--targets", "2", "--robust-samples", "64", "--ood-samples", "64", "--ood-steps", "2",
            "--batch-size", "64"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())
    out = capsys.readouterr().out
    assert "clean accuracy" in out and "OOD synthetic: worst-case AUROC" in out
    assert results["arch"] == "tiny" and results["samples"] == 128
    assert results["clean_accuracy"] > 0.9
    assert set(results["ood"]["synthetic"]) >= {"auroc", "fpr95", "mean_max_conf", "worst_case_auroc"}
    assert (tmp_path / "eval" / "eval_state.pt").exists()
    assert main(argv) == 0  # everything is in the state now: same results, no recomputation
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == results


@pytest.mark.parametrize("extra, message", [
    (["--attacks", "fgsm"], "--attacks: unknown attack 'fgsm'"),
    (["--ood", "synthetic,nope"], "--out-data: 'nope'"),
    (["--samples", "-1"], "--samples must be >= 0"),
])
def test_eval_command_bad_flags(trained_tiny, tmp_path, capsys, extra, message):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    assert main(["eval", str(tmp_path / "checkpoint.pt"), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ratio-fast: error:") and message in err and err.count("\n") == 1
