"""Python access to trained models: rf.load_run (model, settings, metrics of a run), rf.evaluate
(`ratio-fast eval`'s protocol on any nn.Module, same numbers), and `ratio-fast eval` of what
`ratio-fast export` wrote (same numbers as of the checkpoint)."""
import json

import numpy as np
import pytest
import torch

import ratio_fast as rf
from ratio_fast.cli.main import main
from ratio_fast.data import load_in_distribution
from ratio_fast.training.checkpoint import load_checkpoint

FAST = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
        "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "16", "--epochs", "2",
        "--seed", "3"]
# A short evaluation with every part: clean, both attacks, OOD clean and worst case.
EVAL = dict(steps=2, targets=2, robust_samples=48, ood_steps=2, batch_size=32)
EVAL_FLAGS = ["--device", "cpu", "--samples", "96", "--steps", "2", "--targets", "2", "--robust-samples", "48",
              "--ood-steps", "2", "--batch-size", "32", "--ood-samples", "64"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    assert main(FAST + ["--out", str(root / "run")]) == 0
    out = np.ascontiguousarray(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    np.save(root / "noise.npy", out)
    return root


def test_load_run_gives_the_model_settings_and_metrics(run):
    loaded = rf.load_run(run / "run")
    assert loaded.checkpoint.name == "best.pt" and loaded.config.arch == "tiny" and loaded.config.seed == 3
    assert [row["epoch"] for row in loaded.metrics] == [1, 2] and {r["kind"] for r in loaded.metrics} == {"epoch"}
    ema = load_checkpoint(run / "run" / "best.pt")["trainer"]["ema"]["model"]
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, ema[name]), name
    raw = rf.load_run(run / "run" / "checkpoint.pt", weights="model").model.state_dict()
    assert not all(torch.equal(raw[k], ema[k]) for k in raw)  # the raw weights are not the EMA's
    assert not loaded.model.training


def test_evaluate_any_module_gives_the_numbers_of_the_eval_command(run, capsys):
    assert main(["eval", str(run / "run"), *EVAL_FLAGS, "--ood", str(run / "noise.npy"),
                 "--out", str(run / "eval")]) == 0
    capsys.readouterr()
    command = json.loads((run / "eval" / "eval.json").read_text())

    model = rf.load_run(run / "run").model
    test = load_in_distribution("synthetic", "data", train=False, seed=3)
    x = torch.from_numpy(test.images[:96]).permute(0, 3, 1, 2).float().div(255)
    y = torch.from_numpy(test.labels[:96]).long()
    z = torch.from_numpy(np.load(run / "noise.npy")).permute(0, 3, 1, 2).float().div(255)
    # named as the command names it: each part's attack starts are seeded by its name
    results = rf.evaluate(model, x, y, ood={str(run / "noise.npy"): z}, eps=0.5, **EVAL)
    assert results["clean_accuracy"] == command["clean_accuracy"]
    assert results["robust"] == command["robust"]
    assert results["ood"] == command["ood"]
    assert 0 < results["robust"]["apgd-ce"] <= results["clean_accuracy"]


def test_evaluate_refuses_what_cannot_work(run):
    model = rf.load_run(run / "run").model
    x, y = torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    with pytest.raises(rf.errors.UserError, match="targets=10"):
        rf.evaluate(model, x, y, targets=10)
    with pytest.raises(rf.errors.UserError, match="--steps"):
        rf.evaluate(model, x, y, steps=0)


def test_eval_of_an_export_gives_the_numbers_of_its_checkpoint(run, capsys):
    assert main(["export", str(run / "run"), "--out", str(run / "export")]) == 0
    flags = [*EVAL_FLAGS, "--ood", "uniform-noise"]
    assert main(["eval", str(run / "run"), *flags, "--out", str(run / "eval-checkpoint")]) == 0
    for given in ("export", "export/model.pt", "export/model.safetensors"):
        assert main(["eval", str(run / given), *flags, "--out", str(run / "eval-export")]) == 0
        assert "the weights `ratio-fast export` wrote" in capsys.readouterr().out
        of_checkpoint, of_export = (json.loads((run / name / "eval.json").read_text())
                                    for name in ("eval-checkpoint", "eval-export"))
        for key in ("checkpoint", "evaluated"):
            of_checkpoint.pop(key), of_export.pop(key)
        assert of_export == of_checkpoint


def test_a_safetensors_file_that_is_no_export_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert main(["eval", str(tmp_path / "model.safetensors"), "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert "no checksum" in lines[0]  # a file from elsewhere: unverified, said in a note
    assert lines[1].startswith("ratio-fast: error: export") and "no architecture" in lines[1] and len(lines) == 2
