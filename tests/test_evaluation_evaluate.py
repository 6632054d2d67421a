"""Evaluation: OOD metrics on hand-made cases, the resumable evaluation, `ratio-fast eval`."""
import functools
import itertools
import json
import re
import sys
import types

import numpy as np
import pytest
import torch

from ratio_fast.training.checkpoint import save_checkpoint
from ratio_fast.cli.main import main
from ratio_fast.config import EvalConfig, TrainConfig
from ratio_fast.errors import Note, UserError
from ratio_fast.evaluation.evaluate import (AttackCalls, EvalState, batch_source, evaluate_model,
                                 format_table, run_part, wilson_interval)
from ratio_fast.evaluation.ood import auroc, fpr_at_tpr, max_confidence, ood_metrics


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
    test = batch_source(uint8_images(x[:96]), y[:96].numpy(), batch_size=32, device="cpu")
    ood = batch_source(uint8_images(synthetic_split["out"]), None, batch_size=32, device="cpu", limit=64)
    return test, {"blobs": ood}


SMALL = EvalConfig(eps=0.5, steps=3, targets=2, robust_samples=64, ood_eps=1.0, ood_steps=3, batch_size=32)


def test_batch_source_batches_and_prefix(sources):
    test, _ = sources
    assert len(test) == 3
    head = test.first(40)
    assert len(head) == 2 and head.num_samples == 40
    x, y = head.batch(0, 1)
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,) and x.dtype == torch.float32
    assert torch.equal(x, test.batch(0, 1)[0][:8])


def test_evaluate_model_metrics(trained_tiny, sources, tmp_path):
    test, ood = sources
    results = evaluate_model(trained_tiny, test, ood, SMALL, EvalState(tmp_path / "state.pt", {"id": 1}))
    assert results["clean_accuracy"] > 0.9
    robust = results["robust"]
    assert robust["samples"] == 64
    # Each attack only removes points from those still robust: the numbers can only go down.
    assert robust["all"] == robust["apgd-t"] <= robust["apgd-ce"] <= results["clean_accuracy"] + 1e-9
    blobs = results["ood"]["blobs"]
    assert blobs["samples"] == 64
    assert 0.0 <= blobs["worst_case_auroc"] <= blobs["auroc"] <= 1.0
    assert blobs["worst_case_mean_max_conf"] > blobs["mean_max_conf"]
    json.dumps(results)  # JSON-ready
    table = format_table(results)
    assert "worst-case AUROC" in table and "robust accuracy, apgd-ce + apgd-t" in table
    assert "95 % CI  (64 of 96 images)" in table, "accuracies on part of the test set carry an interval"
    assert "clean accuracy" in table and "(96 images)" in table


def test_later_attacks_only_see_the_points_still_robust(trained_tiny, sources, tmp_path, monkeypatch):
    import ratio_fast.evaluation.evaluate as ev

    test, _ = sources
    seen = {}
    original = ev._fooled_by

    def counting(name, *args):
        fooled_by = original(name, *args)

        def count(x, y, generator):
            seen[name] = seen.get(name, 0) + x.shape[0]
            return fooled_by(x, y, generator)
        return count

    monkeypatch.setattr(ev, "_fooled_by", counting)
    settings = EvalConfig(eps=1.0, steps=3, targets=2, ood_steps=0, batch_size=32)
    results = evaluate_model(trained_tiny, test, {}, settings, EvalState(tmp_path / "s.pt", {}))
    n = test.num_samples
    assert seen["apgd-ce"] == round(results["clean_accuracy"] * n)
    assert seen["apgd-t"] == round(results["robust"]["apgd-ce"] * n) < seen["apgd-ce"]


def test_attack_calls_pad_to_a_fixed_row_count_and_drop_the_padding(monkeypatch):
    """The CUDA-graph path on the CPU: a stand-in for GraphedCall records the shapes it is called with."""
    import ratio_fast.evaluation.evaluate as ev
    from ratio_fast.attacks.apgd import APGDResult

    shapes = []

    class Replayed:  # GraphedCall's contract: same function, fixed shapes, outputs overwritten by the next call
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, *args):
            shapes.append(tuple(a.shape[0] for a in args))
            return self.fn(*args)

    monkeypatch.setattr(ev, "GraphedCall", Replayed)
    fn = lambda x, y: APGDResult(x * 2, y.double(), y > 0, None)  # noqa: E731
    x, y = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 3, 2, 2), torch.arange(10)
    for graphs in (False, True):
        shapes.clear()
        out = AttackCalls(4, graphs=graphs)("site", fn, x, y)
        assert torch.equal(out.best, x * 2) and torch.equal(out.fooled, y > 0) and out.adversarial is None
        assert shapes == ([(4, 4)] * 3 if graphs else [])


def test_wilson_interval():
    low, high = wilson_interval(76, 100)
    assert (round(low, 4), round(high, 4)) == (0.6677, 0.8331)  # the textbook values for 76 of 100
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    low, high = wilson_interval(760, 1000)
    assert high - low == pytest.approx(2 * 1.96 * (0.76 * 0.24 / 1000) ** 0.5, rel=0.02)  # about +-2.6 points


def test_killed_evaluation_resumes_with_the_same_numbers(trained_tiny, sources, tmp_path, monkeypatch):
    import ratio_fast.evaluation.evaluate as ev

    test, ood = sources
    settings = EvalConfig(eps=1.0, steps=3, attacks=("apgd-ce",), ood_steps=2, batch_size=32)
    whole = evaluate_model(trained_tiny, test, ood, settings, EvalState(tmp_path / "a.pt", {"id": 1}))

    attacked = []  # one entry per attacked batch actually computed

    class Killed(Exception):
        pass

    def surviving(kill_after):
        def wrap(still_robust, fooled_by):
            measure = original(still_robust, fooled_by)

            def counted(x, y, g, rows):
                if kill_after is not None and len(attacked) == kill_after:
                    raise Killed  # the process dies in the middle of the attack part
                attacked.append(1)
                return measure(x, y, g, rows)
            return counted
        return wrap

    original = ev._surviving
    monkeypatch.setattr(ev, "_surviving", surviving(kill_after=1))
    with pytest.raises(Killed):
        evaluate_model(trained_tiny, test, ood, settings, EvalState(tmp_path / "b.pt", {"id": 1}, save_interval=0))
    saved = torch.load(tmp_path / "b.pt", weights_only=True)["parts"]
    assert sorted(len(batches) for batches in saved.values()) == [1, 3], "clean done, one attacked batch kept"

    attacked.clear()
    monkeypatch.setattr(ev, "_surviving", surviving(kill_after=None))
    resumed = evaluate_model(trained_tiny, test, ood, settings, EvalState(tmp_path / "b.pt", {"id": 1}))
    assert len(attacked) == len(test) - 1, "only the attacked batches not saved yet are computed"
    assert resumed == whole


def test_state_of_another_evaluation_is_replaced_with_a_note_never_mixed_in(tmp_path):
    identity = {"checkpoint": "a", "content": "1" * 64, "batch_size": 32}
    state = EvalState(tmp_path / "s.pt", identity)
    state.put("p", 0, {"v": torch.ones(2)})
    state.save()
    assert EvalState(tmp_path / "s.pt", identity).done("p", 0)
    with pytest.warns(Note, match=r"s\.pt held the evaluation of other weights \(the content of a changed\); this "
                                  r"evaluation replaces it"):
        assert not EvalState(tmp_path / "s.pt", {**identity, "content": "2" * 64}).done("p", 0)
    with pytest.warns(Note, match=r"another batch-size \(32, now 64\)"):
        EvalState(tmp_path / "s.pt", {**identity, "batch_size": 64})
    data = bytearray((tmp_path / "s.pt").read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "s.pt").write_bytes(bytes(data))
    with pytest.warns(Note, match="s.pt: corrupted: checksum mismatch"):  # a damaged state is computed again
        assert not EvalState(tmp_path / "s.pt", identity).done("p", 0)
    (tmp_path / "bad.pt").write_bytes(b"not a state")
    with pytest.warns(Note, match="bad.pt: not a readable file"):
        EvalState(tmp_path / "bad.pt", {})


def test_run_part_seeds_each_batch_independently_of_order(sources, tmp_path):
    test, _ = sources

    def measure(x, y, g, rows):
        return {"r": torch.rand(1, generator=g)}

    a = run_part(EvalState(tmp_path / "a.pt", {}), "noise", test, measure, seed=3)["r"]
    state = EvalState(tmp_path / "b.pt", {})
    state.put("noise", 2, {"r": a[2:]})  # batch 2 "from an earlier run"
    b = run_part(state, "noise", test, measure, seed=3)["r"]
    assert torch.equal(a, b) and len(set(a.tolist())) == 3


def test_settings_validation():
    with pytest.raises(UserError, match="--attacks"):
        EvalConfig(attacks=("fgsm",)).validate()
    with pytest.raises(UserError, match="--eps"):
        EvalConfig(eps=-1).validate()
    with pytest.raises(UserError, match="--batch-size"):
        EvalConfig(batch_size=0).validate()


# --- AutoAttack itself: the registry's pyautoattack (or fra31's autoattack) -----------------------

def test_autoattack_missing_gives_install_hint(trained_tiny, sources, tmp_path, monkeypatch):
    for name in ("pyautoattack", "autoattack"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    test, _ = sources
    settings = EvalConfig(attacks=(), autoattack=True, batch_size=32)
    with pytest.raises(UserError, match=re.escape('pip install "ratio-fast[eval]"')):
        evaluate_model(trained_tiny, test, {}, settings, EvalState(tmp_path / "s.pt", {}))


def fake_autoattack_module(name, seen):
    """A stand-in with the API of `name` (pyautoattack or fra31's autoattack) that 'attacks' by zeroing the image."""
    module = types.ModuleType(name)

    class AutoAttack:
        def __init__(self, model, norm, eps, version, device, seed, verbose=None):
            assert (verbose is None) == (name == "pyautoattack"), "fra31's version takes verbose, the registry's not"
            self.model, self.attacks_to_run = model, ["apgd-ce", "apgd-t", "fab-t", "square"]
            seen.append((norm, eps, version))

        def run_standard_evaluation(self, x, y, **kwargs):
            assert kwargs == ({"batch_size": x.shape[0]} if name == "pyautoattack"
                              else {"bs": x.shape[0], "return_labels": True})
            seen.append(tuple(self.attacks_to_run))
            x_adv = torch.zeros_like(x)
            return x_adv, self.model(x_adv).argmax(1)

    module.AutoAttack = AutoAttack
    return module


@pytest.mark.parametrize("name", ["pyautoattack", "autoattack"])
def test_autoattack_is_driven_through_either_package(trained_tiny, sources, tmp_path, monkeypatch, name):
    seen = []
    for other in ("pyautoattack", "autoattack"):
        monkeypatch.setitem(sys.modules, other, fake_autoattack_module(other, seen) if other == name else None)
    test, _ = sources
    settings = EvalConfig(eps=0.5, attacks=(), autoattack=True, robust_samples=64, batch_size=32)
    results = evaluate_model(trained_tiny, test, {}, settings, EvalState(tmp_path / "s.pt", {}))
    assert seen[0] == ("L2", 0.5, "standard") and seen[1] == ("apgd-ce", "apgd-t", "fab-t", "square")
    with torch.no_grad():
        zero_pred = trained_tiny(torch.zeros(1, 3, 32, 32)).argmax(1)
    labels = torch.cat([test.batch(0, i)[1] for i in range(2)])
    assert results["robust"]["autoattack"] == pytest.approx((labels == zero_pred).double().mean().item())
    assert results["robust"]["autoattack_version"] == f"AutoAttack standard ({name})"


@pytest.fixture
def cheap_autoattack(monkeypatch):
    """The real package with CI budgets for its two slowest attacks (standard: 5000 Square queries,
    100 FAB iterations; about a minute per robust image on 2 CPU cores). APGD keeps its 100 steps."""
    import ratio_fast.evaluation.autoattack_package as package

    monkeypatch.setattr(package, "AutoAttackPackage",
                        functools.partial(package.AutoAttackPackage, square_queries=50, fab_iterations=5))


def test_own_apgd_is_at_least_as_strong_as_autoattacks_apgd(trained_tiny, sources, tmp_path):
    """APGD-CE then APGD-T (9 targets, 100 steps) leave no more robust points than AutoAttack's own pair."""
    from ratio_fast.evaluation.autoattack_package import AutoAttackPackage

    test, _ = sources
    points = test.first(16)
    settings = EvalConfig(eps=1.0, steps=100, attacks=("apgd-ce", "apgd-t"), ood_steps=0, batch_size=16)
    ours = evaluate_model(trained_tiny, points, {}, settings, EvalState(tmp_path / "s.pt", {}))["robust"]["all"]
    x, y = points.batch(0, 0)
    theirs = AutoAttackPackage(1.0, attacks=("apgd-ce", "apgd-t")).robust(trained_tiny, x, y, seed=0)
    assert 0 < ours * 16 <= int(theirs.sum()) < 16, (ours * 16, int(theirs.sum()))


def test_eval_command_runs_the_real_autoattack(trained_tiny, tmp_path, capsys, cheap_autoattack):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    argv = ["eval", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--samples", "8", "--eps", "1.0",
            "--steps", "10", "--targets", "3", "--autoattack", "--ood", "none", "--batch-size", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    robust = json.loads((tmp_path / "eval" / "eval.json").read_text())["robust"]
    assert robust["autoattack_version"].startswith("AutoAttack standard (pyautoattack")
    assert "reduced budget: square queries 50, FAB iterations 5" in robust["autoattack_version"]
    assert robust["all"] <= min(robust["autoattack"], robust["apgd-t"])
    assert "robust accuracy, AutoAttack" in out and "robust accuracy, all attacks" in out


# --- the command ----------------------------------------------------------------------------------

def write_checkpoint(path, model, arch="tiny", dataset="synthetic", steps_done=40, **extra):
    state = model.state_dict()
    save_checkpoint(path, {"config": TrainConfig(arch=arch, dataset=dataset).to_dict(),
                           "trainer": {"model": state, "ema": {"model": state, "updates": 1}, "steps_done": steps_done},
                           "rng": {}, **extra})


def test_eval_command_writes_json_and_table_and_resumes(trained_tiny, tmp_path, capsys):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    argv = ["eval", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--samples", "128", "--steps", "2",
            "--targets", "2", "--robust-samples", "64", "--ood-samples", "64", "--ood-steps", "2",
            "--batch-size", "64"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())
    captured = capsys.readouterr()
    out = captured.out
    assert "clean accuracy" in out and "OOD smooth-noise: worst-case AUROC" in out
    assert "after step 40 (the last checkpoint)" in out and "EMA weights" in out
    # The run trained on the synthetic out-distribution (mode ratio's default), so it is not an OOD test set.
    assert set(results["ood"]) == {"uniform-noise", "smooth-noise", "permuted-pixels"}
    assert "leave out synthetic" in captured.err
    assert results["arch"] == "tiny" and results["samples"] == 128
    assert results["clean_accuracy"] > 0.9
    assert set(results["ood"]["uniform-noise"]) >= {"auroc", "fpr95", "mean_max_conf", "worst_case_auroc"}
    assert (tmp_path / "eval" / "eval_state.pt").exists()
    assert main(argv) == 0  # everything is in the state now: same results, no recomputation
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == results


def test_eval_of_a_run_directory_takes_best_pt_and_says_so(trained_tiny, tmp_path, capsys):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    write_checkpoint(tmp_path / "best.pt", trained_tiny, steps_done=24,
                     best={"epoch": 3, "step": 24, "test_clean_acc": 0.875})
    assert main(["eval", str(tmp_path), "--device", "cpu", "--samples", "32", "--attacks", "none",
                 "--ood", "none", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    weights_row = next(line for line in out.splitlines() if line.startswith("weights"))
    assert "best.pt: EMA weights, epoch 3 of" in weights_row and "87.50 %" in weights_row
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["checkpoint"].endswith("best.pt")
    (tmp_path / "best.pt").unlink()
    assert main(["eval", str(tmp_path), "--device", "cpu", "--samples", "32", "--attacks", "none",
                 "--ood", "none", "--batch-size", "32", "--out", str(tmp_path / "last")]) == 0
    assert "checkpoint.pt: EMA weights, after step 40" in capsys.readouterr().out


def test_eval_warns_when_asked_for_the_training_out_distribution(trained_tiny, tmp_path, capsys):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    assert main(["eval", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--samples", "32", "--attacks", "none",
                 "--ood", "synthetic", "--ood-samples", "32", "--ood-steps", "0", "--batch-size", "32"]) == 0
    err = capsys.readouterr().err
    assert "warning: --ood synthetic is the training out-distribution of this run" in err


def test_eval_after_more_training_evaluates_the_new_weights(trained_tiny, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(path, trained_tiny)
    argv = ["eval", str(path), "--device", "cpu", "--samples", "64", "--attacks", "none", "--ood", "none",
            "--batch-size", "32"]
    assert main(argv) == 0
    before = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert before["clean_accuracy"] > 0.9
    worse = {k: -v if k.startswith("linear") else v for k, v in trained_tiny.state_dict().items()}
    trained_further = type(trained_tiny)()
    trained_further.load_state_dict(worse)
    write_checkpoint(path, trained_further, steps_done=80)  # the same file, other weights
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"note: {tmp_path / 'eval' / 'eval_state.pt'} held the evaluation of other weights" in captured.err
    assert "after step 80" in captured.out and "{" not in captured.err
    after = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert after["clean_accuracy"] < 0.3  # the new weights' accuracy, not the stored one


def test_ctrl_c_during_eval_keeps_the_finished_batches_and_says_how_to_go_on(trained_tiny, tmp_path, capsys,
                                                                              monkeypatch):
    import ratio_fast.evaluation.evaluate as ev

    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    real, calls = ev.max_confidence, []

    def interrupted_at_the_second_batch(logits):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(logits)

    monkeypatch.setattr(ev, "max_confidence", interrupted_at_the_second_batch)
    argv = ["eval", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--samples", "64", "--attacks", "none",
            "--ood", "none", "--batch-size", "32"]
    assert main(argv) == 130
    err = capsys.readouterr().err.splitlines()[-1]
    state = tmp_path / "eval" / "eval_state.pt"
    assert err == f"ratio-fast: interrupted; the batches evaluated so far are kept in {state}: the same command " \
                  "continues from there"
    assert "checkpoint" not in err.replace(str(tmp_path / "checkpoint.pt"), "")
    (part,) = torch.load(state, weights_only=True)["parts"].values()
    assert list(part) == [0]  # the first batch, saved although the save interval had not passed


@pytest.mark.parametrize("extra, message", [
    (["--attacks", "fgsm"], "--attacks: unknown attack 'fgsm'"),
    (["--targets", "20"], "--targets 20: a model of 10 classes has 9 other classes to target; use --targets 9"),
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0 and <= 9223372036854775807, got -1"),
    (["--attacks", "apgd-ce,apgd-ce"], "names an attack twice"),
    (["--ood", "uniform-noise,nope"], "--ood: 'nope'"),
    (["--samples", "-1"], "--samples must be an integer >= 0"),
    (["--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
])
def test_eval_command_bad_flags(trained_tiny, tmp_path, capsys, extra, message):
    write_checkpoint(tmp_path / "checkpoint.pt", trained_tiny)
    argv = ["eval", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--samples", "32", "--ood-samples", "32",
            "--steps", "1", "--targets", "2", "--ood-steps", "0", "--batch-size", "32", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("note:")]
    assert lines[0].startswith("ratio-fast: error:") and message in lines[0] and len(lines) == 1
