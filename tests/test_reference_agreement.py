"""The benchmark's plain reference (bench/reference.py) and the engine compute the same RATIO step.

The speedup in bench/ is only meaningful if both sides do the same work: same adversarial
examples, same loss, same updated weights and EMA, from the same initial weights and batch.
The engine runs its fused path (the Triton kernel, in the interpreter here) in fp32.
"""
import importlib.util
from pathlib import Path

import pytest
import torch

from ratio_fast import RatioTrainer, TrainConfig, create_model

REFERENCE = Path(__file__).resolve().parents[1] / "bench" / "reference.py"


def load_reference():
    spec = importlib.util.spec_from_file_location("ratio_bench_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=["l2", "linf"])
def pair(request):
    """(engine, reference) on identical copies of one initialized tiny model, in each norm."""
    reference_module = load_reference()
    config = TrainConfig(arch="tiny", batch_size=32, steps_in=3, steps_out=5, backend="triton", lr=0.1,
                         norm=request.param)
    torch.manual_seed(0)
    model = create_model("tiny")
    twin = create_model("tiny")
    twin.load_state_dict(model.state_dict())
    engine = RatioTrainer(model, config, total_steps=10, device="cpu")
    assert engine.speed.amp_dtype is None and engine.speed.fused_optimizer and not engine.speed.compile
    return engine, reference_module.ReferenceRatio(twin, config, total_steps=10, device="cpu")


@pytest.fixture(scope="module")
def batch(synthetic_split):
    x, y = synthetic_split["train"]
    return x[:32], y[:32], synthetic_split["out"][:32]


def test_adversarial_examples_agree(pair, batch):
    engine, reference = pair
    x, y, z = batch
    ours = engine.adversarial_examples(x, y, z)
    theirs = reference.attack(x, y, z)
    for a, b, clean in zip(ours, theirs, (x, z)):
        assert (b - clean).flatten(1).norm(dim=1).mean() > 0.05  # both attacks really moved the points
        assert torch.allclose(a, b, atol=1e-4)


def test_one_step_gives_the_same_loss_weights_and_ema(pair, batch):
    engine, reference = pair
    x, y, z = batch
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    loss_engine = engine.step(x, y, z)["loss"]
    loss_reference = reference.step(x, y, z)
    assert loss_engine.item() == pytest.approx(loss_reference.item(), rel=1e-5)
    for name, model in (("model", (engine.model, reference.model)), ("ema", (engine.ema.model, reference.ema))):
        ours, theirs = (m.state_dict() for m in model)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.allclose(ours[key].float(), theirs[key].float(), rtol=1e-4, atol=1e-6), (name, key)
    changed = [k for k, v in engine.model.state_dict().items() if not torch.equal(v, before[k])]
    assert "linear.weight" in changed and any("running_mean" in k for k in changed)


@pytest.mark.parametrize("mode, norm", [("trades", "l2"), ("acet", "l2"), ("trades", "linf")])
def test_trades_and_acet_agree_with_the_reference(mode, norm, batch):
    """TRADES (its clean target, 0.001 * randn start, KL batchmean) and ACET (1/1 weights, the
    out-distribution attack alone) step for step against bench/reference.py's written-out types;
    TRADES in L-infinity too (a training type and a threat model together)."""
    reference_module = load_reference()
    config = TrainConfig(arch="tiny", mode=mode, batch_size=32, steps_in=3, steps_out=5, backend="triton", lr=0.1,
                         norm=norm)
    torch.manual_seed(0)
    model = create_model("tiny")
    twin = create_model("tiny")
    twin.load_state_dict(model.state_dict())
    engine = RatioTrainer(model, config, total_steps=10, device="cpu")
    reference = reference_module.ReferenceRatio(twin, config, total_steps=10, device="cpu")
    x, y, z = batch
    torch.manual_seed(1)  # the same start noise on both sides (TRADES)
    ours = engine.adversarial_examples(x, y, z)
    torch.manual_seed(1)
    theirs = reference.attack(x, y, z)
    for a, b, clean in zip(ours, theirs, (x, z)):
        assert (a is None) == (b is None)
        if b is not None:
            assert (b - clean).flatten(1).norm(dim=1).mean() > 0.05  # the attack really moved the points
            assert torch.allclose(a, b, atol=1e-4)
    torch.manual_seed(2)
    loss_engine = engine.step(x, y, z)["loss"]
    torch.manual_seed(2)
    loss_reference = reference.step(x, y, z)
    assert loss_engine.item() == pytest.approx(loss_reference.item(), rel=1e-5)
    ours, theirs = engine.model.state_dict(), reference.model.state_dict()
    for key in ours:
        assert torch.allclose(ours[key].float(), theirs[key].float(), rtol=1e-4, atol=1e-6), key
