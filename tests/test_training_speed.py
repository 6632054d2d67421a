"""The speed switches on CPU: attack schedules, the measured 'auto' choice, fp32 first conv, resolution.

What needs CUDA (graphs, streams that really overlap, compile on the GPU) is in test_gpu.py.
"""
import pytest
import torch

from ratio_fast import L2PGD, RatioTrainer, TrainConfig, create_model
from ratio_fast.attacks.schedule import run_attacks
from ratio_fast.attacks.pgd import joint_l2_pgd
from ratio_fast.cli.main import build_parser
from ratio_fast.errors import UserError
from ratio_fast.models import MODEL_NAMES, Fp32Conv2d, keep_first_conv_fp32
from ratio_fast.models.precision import first_conv
from ratio_fast.training.speed import resolve_speed


def argmin_pgd(eps, steps, objective):
    return L2PGD(eps, steps, 0.1, momentum=0.9, keep_best=True, objective=objective)


@pytest.fixture
def in_and_out(synthetic_split):
    x, y = synthetic_split["test"]
    return x[:48], y[:48], synthetic_split["out"][:40]


# ---- schedules ------------------------------------------------------------------------------

@pytest.mark.parametrize("steps_in,steps_out", [(3, 6), (6, 3), (4, 4)])
def test_concatenated_attack_equals_the_two_separate_attacks(trained_tiny, in_and_out, steps_in, steps_out):
    x, y, z = in_and_out
    attack_in, attack_out = argmin_pgd(0.5, steps_in, "ce"), argmin_pgd(1.0, steps_out, "kl_uniform")
    x_joint, z_joint = joint_l2_pgd(trained_tiny, x, y, z, attack_in, attack_out)
    x_alone, z_alone = attack_in(trained_tiny, x, y), attack_out(trained_tiny, z)
    # Not bit-equal: a conv over 88 images rounds differently from one over 48 or 40.
    assert torch.allclose(x_joint, x_alone, atol=1e-4)
    assert torch.allclose(z_joint, z_alone, atol=1e-4)
    assert (x_alone - x).flatten(1).norm(dim=1).max() > 0.1  # the attacks did move the points


def test_concatenated_attack_needs_matching_settings(trained_tiny, in_and_out):
    x, y, z = in_and_out
    with pytest.raises(ValueError, match="momentum"):
        joint_l2_pgd(trained_tiny, x, y, z, argmin_pgd(0.5, 2, "ce"),
                     L2PGD(1.0, 2, 0.1, momentum=0.5, keep_best=True, objective="kl_uniform"))


def test_every_schedule_computes_the_same_examples_on_cpu(trained_tiny, in_and_out):
    x, y, z = in_and_out
    attacks = argmin_pgd(0.5, 3, "ce"), argmin_pgd(1.0, 5, "kl_uniform")
    sequential = run_attacks("sequential", trained_tiny, x, y, z, *attacks)
    streams = run_attacks("streams", trained_tiny, x, y, z, *attacks)  # no side stream on a CPU
    concat = run_attacks("concat", trained_tiny, x, y, z, *attacks)
    for a, b, c in zip(sequential, streams, concat):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, atol=1e-4)


def test_attack_with_weight_gradients_gives_the_same_examples(trained_tiny, in_and_out):
    x, y, _ = in_and_out
    grads = [None if p.grad is None else p.grad.clone() for p in trained_tiny.parameters()]
    fast = argmin_pgd(0.5, 3, "ce")(trained_tiny, x, y)
    slow = L2PGD(0.5, 3, 0.1, momentum=0.9, keep_best=True, input_grad_only=False)(trained_tiny, x, y)
    assert torch.allclose(fast, slow, atol=1e-6)
    for p, g in zip(trained_tiny.parameters(), grads):  # computed and dropped, never accumulated
        assert p.requires_grad and (p.grad is g is None or torch.equal(p.grad, g))


# ---- the measured choice ------------------------------------------------------------------

def test_trainer_auto_schedule_uses_the_injected_timer_and_logs(synthetic_split, tmp_path):
    x, y = synthetic_split["train"]
    x, y, z = x[:32], y[:32], synthetic_split["out"][:32]
    config = TrainConfig(arch="tiny", steps_in=2, steps_out=3, batch_size=32, attack_schedule="auto")
    ran, lines = [], []

    def timer(name, run):
        run()  # the timer is handed the real attack phase under that schedule
        ran.append(name)
        return {"streams": 0.5, "concat": 0.1}[name]

    def trainer(**kw):
        torch.manual_seed(0)
        return RatioTrainer(create_model("tiny"), config, total_steps=4, schedule_timer=timer,
                            schedule_cache=tmp_path / "cache.json", **kw)

    measured = trainer(log=lines.append)
    measured.step(x, y, z)
    assert sorted(ran) == ["concat", "streams"]
    assert measured.schedule_choice.best == "concat" and lines == [measured.schedule_choice.describe()]
    assert lines == ["attack schedule: concat (measured: streams 500.0 ms, concat 100.0 ms)"]

    cached = trainer()
    cached.step(x, y, z)
    assert len(ran) == 2 and cached.schedule_choice.cached  # the second run only read the cache
    assert cached.schedule_choice.describe() == "attack schedule: concat (cached: concat 100.0 ms, streams 500.0 ms)"

    torch.manual_seed(0)
    explicit = RatioTrainer(create_model("tiny"), TrainConfig(**{**config.to_dict(), "attack_schedule": "concat"}),
                            total_steps=4)
    explicit.step(x, y, z)
    for key, value in explicit.model.state_dict().items():
        assert torch.equal(value, cached.model.state_dict()[key]), key


def test_auto_on_cpu_without_a_timer_is_sequential_and_measures_nothing(synthetic_split, tmp_path, monkeypatch):
    monkeypatch.setenv("RATIO_FAST_CACHE_DIR", str(tmp_path))
    x, y = synthetic_split["train"]
    trainer = RatioTrainer(create_model("tiny"), TrainConfig(arch="tiny", steps_in=1, steps_out=1), total_steps=2)
    trainer.step(x[:16], y[:16], synthetic_split["out"][:16])
    assert trainer.schedule_choice is None and trainer.attack_schedule == "sequential"
    assert not list(tmp_path.iterdir())


# ---- switches and their defaults ------------------------------------------------------------

def test_defaults_are_fast_on_cuda_and_plain_on_cpu():
    config = TrainConfig()
    cuda, cpu = resolve_speed(config, "cuda"), resolve_speed(config, "cpu")  # no CUDA call involved
    assert (cuda.amp_dtype, cuda.channels_last, cuda.cuda_graphs, cuda.compile) == (torch.bfloat16, True, True, True)
    assert (cpu.amp_dtype, cpu.channels_last, cpu.cuda_graphs, cpu.compile) == (None, False, False, False)
    assert cuda.attack_schedule == "auto" and cuda.fp32_first_conv and cuda.fused_optimizer and cuda.input_grad_only
    assert not cpu.fp32_first_conv  # nothing to keep in fp32 without autocast
    assert resolve_speed(TrainConfig(attack_schedule="streams"), "cpu").attack_schedule == "sequential"
    with pytest.raises(UserError, match="--cuda-graphs"):
        resolve_speed(TrainConfig(cuda_graphs=True), "cpu")


def test_cli_switches_reach_the_config():
    args = build_parser().parse_args([
        "train", "--attack-schedule", "concat", "--no-cuda-graphs", "--compile", "--no-fp32-first-conv",
        "--no-input-grad-only", "--no-fused-optimizer", "--amp", "--no-channels-last"])
    assert (args.attack_schedule, args.cuda_graphs, args.compile, args.fp32_first_conv) == ("concat", False, True, False)
    assert (args.input_grad_only, args.fused_optimizer, args.amp, args.channels_last) == (False, False, True, False)
    defaults = build_parser().parse_args(["train"])
    assert (defaults.amp, defaults.cuda_graphs, defaults.compile, defaults.attack_schedule) == (None, None, None, "auto")
    with pytest.raises(UserError, match="--attack-schedule"):
        TrainConfig(attack_schedule="parallel").validate()


# ---- the first convolution in fp32 --------------------------------------------------------------

@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_first_conv_fp32_keeps_names_and_finds_the_stem(arch):
    model = create_model(arch)
    keys = list(model.state_dict())
    stem = first_conv(model)
    keep_first_conv_fp32(model)
    assert type(stem) is Fp32Conv2d and stem.in_channels == 3
    assert sum(isinstance(m, Fp32Conv2d) for m in model.modules()) == 1
    assert list(model.state_dict()) == keys  # checkpoints and RobustBench keys unchanged


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_first_conv_output_is_fp32_under_bf16_autocast(arch):
    model = keep_first_conv_fp32(create_model(arch)).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][:2]
    dtypes = []
    for conv in convs:
        conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.rand(2, 3, 32, 32))
    assert dtypes == [torch.float32, torch.bfloat16]


def robust_accuracy(model, x, y, autocast_dtype=None):
    attack = L2PGD(eps=1.5, steps=10, step_size=0.3)
    context = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else torch.autocast("cpu", enabled=False)
    with context:
        x_adv = attack(model, x, y)
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def test_bf16_with_fp32_first_conv_attacks_as_strongly_as_fp32(trained_tiny, synthetic_split):
    x, y = synthetic_split["test"]
    fp32 = robust_accuracy(trained_tiny, x, y)
    model = keep_first_conv_fp32(create_model("tiny"))
    model.load_state_dict(trained_tiny.state_dict())
    model.eval()
    bf16 = robust_accuracy(model, x, y, torch.bfloat16)
    with torch.no_grad():
        clean = (trained_tiny(x).argmax(1) == y).float().mean().item()
    assert fp32 < clean - 0.3  # the attack matters at this radius
    # 256 paired images: the same attack up to bf16 rounding moves robust accuracy by a few images.
    assert abs(bf16 - fp32) <= 4 / len(y), (bf16, fp32)


def test_trainer_under_amp_keeps_the_first_conv_in_fp32():
    on = RatioTrainer(create_model("tiny"), TrainConfig(arch="tiny", amp=True), total_steps=1)
    off = RatioTrainer(create_model("tiny"), TrainConfig(arch="tiny", amp=True, fp32_first_conv=False), total_steps=1)
    fp32 = RatioTrainer(create_model("tiny"), TrainConfig(arch="tiny"), total_steps=1)
    assert type(first_conv(on.model)) is Fp32Conv2d and type(first_conv(on.ema.model)) is Fp32Conv2d
    assert type(first_conv(off.model)) is torch.nn.Conv2d and type(first_conv(fp32.model)) is torch.nn.Conv2d
