"""The README's API section runs as written: its code block, on a CPU with the tiny model.

The block is read from README.md, so an edit there (or a renamed argument here) fails this
test. Two words are swapped for a CPU run: the WRN-34-10 becomes the tiny model and "cuda"
becomes "cpu"; every call and argument is the README's.
"""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def api_block() -> str:
    section = README.read_text().split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_block_runs_and_does_what_its_comments_say(trained_tiny, synthetic_split, tmp_path):
    from ratio_fast import TrainConfig
    from ratio_fast.training.checkpoint import save_checkpoint

    # the run directory of the block: a checkpoint of the tiny model
    state = trained_tiny.state_dict()
    save_checkpoint(tmp_path / "checkpoint.pt", {"config": TrainConfig(arch="tiny", dataset="synthetic").to_dict(),
                                                 "trainer": {"model": state, "ema": {"model": state}, "steps_done": 1}})
    code = api_block().replace('create_model("wrn34")', 'create_model("tiny")').replace('device="cuda"', 'device="cpu"')
    code = code.replace('"runs/ratio-wrn34"', repr(str(tmp_path)))
    assert code.count('"tiny"') == 1 and code.count('"cpu"') == 1  # the swaps found their words
    assert code.count(repr(str(tmp_path))) == 1
    x, y = synthetic_split["test"]
    x, y, z = x[:16], y[:16], synthetic_split["out"][:16]
    delta, v = torch.zeros_like(x), torch.zeros_like(x)
    names = dict(model=trained_tiny, x=x, y=y, z=z, delta=delta, grad=torch.randn_like(x), eps=0.5, v=v, n=4)
    exec(compile(code, str(README), "exec"), names)

    radius = (names["x_adv"] - x).flatten(1).norm(dim=1)
    assert 0 < radius.max() <= 0.5 + 1e-5  # the fused step, within eps of x
    assert 0 < (names["x_box"] - x).abs().max() <= 8 / 255 + 1e-6  # its L-infinity line, within the box
    assert 0 < (names["x_linf"] - x).abs().max() <= 8 / 255 + 1e-6  # LinfPGD, within its box
    assert names["fooled"].dtype == torch.bool and names["fooled"].shape == y.shape
    assert ((names["z_adv"] - z).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()
    assert names["trainer"].steps_done == 1
    assert {"loss", "adv_acc", "clean_acc", "out_conf"} <= set(names["metrics"])
    assert torch.isfinite(names["metrics"]["loss"])
    assert names["run"].config.arch == "tiny" and names["run"].metrics == []
    results = names["results"]
    assert results["samples"] == 16 and results["robust"]["steps"] == 10 and results["ood"]["noise"]["worst_case_steps"] == 10 and set(results["ood"]) == {"noise"}
    assert 0 <= results["robust"]["all"] <= results["clean_accuracy"] and 0 <= results["ood"]["noise"]["auroc"] <= 1




def test_every_path_and_module_the_readme_names_exists():
    """The files of the README's commands, its "Adding to ratio-fast" list and its text exist, and
    each `ratio_fast.x.y` it names imports (a module, or a name in one)."""
    import importlib

    text, root = README.read_text(), README.parent
    paths = {p for p in re.findall(r"(?<![\w/.-])((?:ratio_fast|tests|bench|kernels|configs)/[\w./-]*\w)", text)
             if "<" not in p}
    assert "ratio_fast/attacks/named.py" in paths and not [p for p in sorted(paths) if not (root / p).exists()]
    names = set(re.findall(r"-m (ratio_fast[\w.]*)", text)) | set(re.findall(r"`(ratio_fast(?:\.\w+)+)`", text))

    def module_and_rest(parts):  # the longest prefix that is a module, and the names after it
        for k in range(len(parts), 0, -1):
            try:
                return importlib.import_module(".".join(parts[:k])), parts[k:]
            except ModuleNotFoundError:
                continue

    missing = []
    for name in sorted(names):
        found, attributes = module_and_rest(name.split("."))
        for attribute in attributes:
            found = getattr(found, attribute, None)
        if found is None:
            missing.append(name)
    assert "ratio_fast.cli" in names and missing == []
