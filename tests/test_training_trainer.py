"""RatioTrainer: the RATIO step, its schedule and EMA, AMP, and fused vs reference agreement."""
import copy
import math

import pytest
import torch

from ratio_fast import RatioTrainer, TrainConfig, create_model
from ratio_fast.training.ema import ModelEMA
from ratio_fast.errors import UserError
from ratio_fast.attacks.objectives import kl_to_uniform, ratio_loss
from ratio_fast.training.trainer import cosine_lr


def small_config(**overrides):
    values = dict(arch="tiny", steps_in=3, steps_out=4, batch_size=32, lr=0.05)
    values.update(overrides)
    return TrainConfig(**values)


def make_trainer(config, total_steps=20, seed=0):
    torch.manual_seed(seed)
    return RatioTrainer(create_model("tiny"), config, total_steps=total_steps, device="cpu")


def batches(split, n_steps, size=32):
    x, y = split["train"]
    z = split["out"]
    for i in range(n_steps):
        sl = slice(i * size, (i + 1) * size)
        yield x[sl], y[sl], z[(i * size) % len(z):][:size]


def test_kl_to_uniform_is_zero_at_uniform_and_positive_elsewhere():
    assert torch.allclose(kl_to_uniform(torch.zeros(4, 10)), torch.zeros(4), atol=1e-6)
    logits = torch.randn(4, 10) * 3
    p = logits.softmax(1)
    expected = (torch.full_like(p, 0.1) * (torch.full_like(p, 0.1).log() - p.log())).sum(1)
    assert torch.allclose(kl_to_uniform(logits), expected, atol=1e-5)


def test_ratio_loss_weights_in_and_out_halves():
    logits_in, y, logits_out = torch.randn(8, 10), torch.randint(0, 10, (8,)), torch.randn(8, 10)
    ce = torch.nn.functional.cross_entropy(logits_in, y)
    kl = kl_to_uniform(logits_out).mean()
    assert torch.allclose(ratio_loss(logits_in, y, logits_out, 2.0), 0.5 * ce + 0.5 * 2.0 * kl)
    assert torch.allclose(ratio_loss(logits_in, y, None, 2.0), ce)


def test_cosine_schedule_per_step():
    assert cosine_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_lr(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_lr(0.1, 100, 100) == pytest.approx(0.0)
    assert cosine_lr(0.1, 25, 100) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))


def test_ema_warm_up_and_buffers():
    model = create_model("tiny")
    ema = ModelEMA(model, decay=0.999)
    start = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for t in model.state_dict().values():
            t.add_(1) if t.is_floating_point() else t.add_(7)
    ema.update(model)  # update 0: decay min(0.999, 1/10) = 0.1
    for key, value in ema.model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.1 * start[key] + 0.9 * (start[key] + 1), atol=1e-6), key
        else:  # num_batches_tracked is copied, not averaged
            assert torch.equal(value, start[key] + 7), key
    assert any("running_mean" in k for k in ema.model.state_dict())


def test_ratio_step_runs_and_reports(synthetic_split):
    trainer = make_trainer(small_config())
    before = copy.deepcopy(trainer.model.state_dict())
    x, y, z = next(batches(synthetic_split, 1))
    metrics = trainer.step(x, y, z)
    assert set(metrics) == {"loss", "loss_in", "loss_out", "adv_acc", "clean_acc", "lr", "out_conf", "skipped"}
    assert metrics["skipped"] == 0
    assert all(torch.isfinite(v) for v in metrics.values())
    assert trainer.steps_done == 1 and trainer.model.training
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("weight" in k for k in changed) and any("running_mean" in k for k in changed)


def test_modes_at_and_plain_skip_the_out_distribution(synthetic_split):
    x, y, z = next(batches(synthetic_split, 1))
    at = make_trainer(small_config(mode="at")).step(x, y)
    plain = make_trainer(small_config(mode="plain")).step(x, y)
    assert "out_conf" not in at and "out_conf" not in plain
    assert plain["clean_acc"] == plain["adv_acc"]
    with pytest.raises(ValueError, match="out-distribution"):
        make_trainer(small_config()).step(x, y)


def test_training_with_out_distribution_lowers_its_confidence(synthetic_split):
    # RATIO's second half: after training, out-distribution inputs get low confidence.
    trainer = make_trainer(small_config(lr=0.05, steps_in=2, steps_out=2), total_steps=30)
    for x, y, z in batches(synthetic_split, 30):
        trainer.step(x, y, z)
    model = trainer.model.eval()
    with torch.no_grad():
        out_conf = model(synthetic_split["out"]).softmax(1).amax(1).mean()
        in_conf = model(synthetic_split["test"][0]).softmax(1).amax(1).mean()
    assert out_conf < 0.3 < in_conf


def test_fused_and_reference_paths_train_the_same(synthetic_split):
    """A few RATIO steps with the Triton step and with the torch reference: same losses and weights."""
    results = []
    for backend in ("triton", "torch"):
        trainer = make_trainer(small_config(backend=backend), total_steps=4)
        losses = [trainer.step(x, y, z)["loss"].item() for x, y, z in batches(synthetic_split, 4)]
        results.append((losses, trainer.model.state_dict()))
    (loss_a, state_a), (loss_b, state_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-4, abs=1e-5)
    for key in state_a:
        assert torch.allclose(state_a[key].float(), state_b[key].float(), rtol=1e-3, atol=1e-5), key


@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_amp_step_on_cpu(synthetic_split, amp_dtype):
    trainer = make_trainer(small_config(amp=True, amp_dtype=amp_dtype, steps_in=2, steps_out=2))
    assert trainer.scaler.is_enabled() == (amp_dtype == "fp16")
    for x, y, z in batches(synthetic_split, 2):
        metrics = trainer.step(x, y, z)
    assert torch.isfinite(metrics["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_channels_last_trains_like_contiguous(synthetic_split):
    states = []
    for cl in (False, True):
        trainer = make_trainer(small_config(channels_last=cl, steps_in=2, steps_out=2), total_steps=2)
        for x, y, z in batches(synthetic_split, 2):
            trainer.step(x, y, z)
        states.append(trainer.model.state_dict())
    for key in states[0]:
        assert torch.allclose(states[0][key].float(), states[1][key].float(), rtol=1e-3, atol=1e-5), key


def test_state_dict_round_trip_continues_identically(synthetic_split):
    steps = list(batches(synthetic_split, 4))
    straight = make_trainer(small_config(), total_steps=4)
    for x, y, z in steps:
        straight.step(x, y, z)
    first = make_trainer(small_config(), total_steps=4)
    for x, y, z in steps[:2]:
        first.step(x, y, z)
    second = make_trainer(small_config(), total_steps=4, seed=123)  # different init, overwritten
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for x, y, z in steps[2:]:
        second.step(x, y, z)
    for key, value in straight.state_dict()["model"].items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    for key, value in straight.ema.model.state_dict().items():
        assert torch.equal(value, second.ema.model.state_dict()[key]), key


def training_state(trainer):
    """Everything a step may change: weights and BatchNorm statistics, momentum, EMA (and its count)."""
    momentum = [trainer.optimizer.state[p]["momentum_buffer"] for p in trainer.model.parameters()]
    return copy.deepcopy((trainer.model.state_dict(), momentum, trainer.ema.model.state_dict(), trainer.ema.count))


def assert_bit_identical(a, b):
    for left, right in zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)):
        assert torch.equal(left, right)


@pytest.mark.parametrize("overrides", [
    dict(),                                       # fused SGD: its kernel reads the flag
    dict(fused_optimizer=False),                  # foreach SGD: the update is undone on the device
    dict(amp=True, amp_dtype="fp16"),             # the GradScaler's overflow path
], ids=["fused", "unfused", "fp16"])
def test_non_finite_step_is_skipped_without_touching_any_state(synthetic_split, overrides):
    trainer = make_trainer(small_config(steps_in=1, steps_out=1, **overrides), total_steps=10)
    steps = list(batches(synthetic_split, 4))
    x, y, z = steps[0]
    trainer.step(x, y, z)  # a normal step first, so momentum and EMA hold real values
    before = training_state(trainer)

    poisoned = x.clone()
    poisoned[3] = float("nan")  # one bad image poisons the loss, the gradients and BatchNorm's statistics
    for in_a_row in (1, 2):
        metrics = trainer.step(poisoned, y, z)
        assert metrics["skipped"] == 1 and trainer.skipped_in_a_row == in_a_row
        assert_bit_identical(training_state(trainer), before)
    assert trainer.steps_done == 3  # counted (the LR schedule moves on), never written into the weights

    x, y, z = steps[1]
    metrics = trainer.step(x, y, z)
    assert metrics["skipped"] == 0 and trainer.skipped_in_a_row == 0
    after = training_state(trainer)
    assert all(torch.isfinite(t).all() for t in torch.utils._pytree.tree_leaves(after) if t.is_floating_point())
    assert not torch.equal(after[0]["linear.weight"], before[0]["linear.weight"])  # the finite step trains
    assert after[3] == before[3] + 1


def test_skipped_first_step_leaves_a_clean_optimizer(synthetic_split):
    """A skipped very first step must not leave half-initialized momentum behind."""
    steps = list(batches(synthetic_split, 2))
    poisoned = steps[0][0].clone()
    poisoned[0, 0, 0, 0] = float("inf")
    skipping, straight = make_trainer(small_config(steps_in=1, steps_out=1)), make_trainer(small_config(steps_in=1, steps_out=1))
    assert skipping.step(poisoned, *steps[0][1:])["skipped"] == 1
    skipping.steps_done = 0  # same learning rate as the straight run from here on
    for trainer in (skipping, straight):
        trainer.step(*steps[1])
    assert_bit_identical(training_state(skipping), training_state(straight))


def test_train_module_runs_the_train_forward_and_the_model_the_attacks(synthetic_split):
    class Counting(torch.nn.Module):  # stands in for a DistributedDataParallel wrapper
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, x):
            self.calls += 1
            assert self.module.training
            return self.module(x)

    torch.manual_seed(0)
    model = create_model("tiny")
    wrapper = Counting(model)
    trainer = RatioTrainer(model, small_config(steps_in=2, steps_out=2), total_steps=4, train_module=wrapper)
    x, y, z = next(batches(synthetic_split, 1))
    trainer.step(x, y, z)
    assert wrapper.calls == 1  # once per step: the joint train-mode forward, never the attacks
    reference = make_trainer(small_config(steps_in=2, steps_out=2), total_steps=4)
    reference.step(x, y, z)
    assert_bit_identical(trainer.model.state_dict(), reference.model.state_dict())


def test_attack_apgd_trains_with_apgd_on_both_streams(synthetic_split):
    from ratio_fast.attacks.apgd import APGD

    x, y = synthetic_split["train"]
    z = synthetic_split["out"]
    torch.manual_seed(0)
    config = TrainConfig(arch="tiny", attack="apgd", steps_in=2, steps_out=3, device="cpu")
    trainer = RatioTrainer(create_model("tiny"), config, total_steps=2)
    assert isinstance(trainer.attack_in, APGD) and isinstance(trainer.attack_out, APGD)
    assert (trainer.attack_in.objective, trainer.attack_out.objective) == ("ce", "kl_uniform")
    assert (trainer.attack_in.eps, trainer.attack_out.eps) == (config.eps_in, config.eps_out)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.step(x[:32], y[:32], z[:32])
    assert torch.isfinite(metrics["loss"]) and metrics["skipped"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    with pytest.raises(UserError, match="concat"):
        RatioTrainer(create_model("tiny"), TrainConfig(arch="tiny", attack="apgd", attack_schedule="concat"), 2)
