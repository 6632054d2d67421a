"""Checks that need a CUDA device: they skip on CPU-only machines (CI) and run on a lent GPU.

The same contracts as the CPU tests, on the real backend: the compiled Triton kernels against
the reference, no host synchronization in the attack loop, capture in a CUDA graph, and a
bf16 channels_last RATIO step.
"""
import pytest
import torch

from ratio_fast import L2PGD, RatioTrainer, TrainConfig, create_model
from ratio_fast.ops import pgd_step, pgd_step_ref, random_start, random_start_ref
from conftest import no_host_sync

pytestmark = pytest.mark.gpu


def cuda_inputs(shape, grad_dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(shape, generator=g)
    delta = torch.randn(shape, generator=g) * 0.05
    grad = torch.randn(shape, generator=g) * 1e-2
    velocity = torch.randn(shape, generator=g) * 1e-3
    eps = torch.rand(shape[0], generator=g) * 1.5
    to = lambda t, dtype=torch.float32: t.to("cuda", dtype).contiguous(memory_format=fmt)
    return to(x), to(delta), to(grad, grad_dtype), to(velocity), eps.cuda()


@pytest.mark.parametrize("shape", [(129, 3, 32, 32), (3, 3, 64, 64), (2, 3, 96, 96)])
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_pgd_step_matches_reference_on_cuda(shape, grad_dtype, channels_last):
    x, delta, grad, velocity, eps = cuda_inputs(shape, grad_dtype, channels_last)
    fused = pgd_step(x, delta, grad, eps, 0.1, velocity, 0.9, backend="triton")
    same = pgd_step_ref(x, delta, grad, eps, 0.1, velocity, 0.9)
    oracle = pgd_step_ref(x.double(), delta.double(), grad.double(), eps, 0.1, velocity.double(), 0.9)
    for f, s, o in zip(fused, same, oracle):
        assert ((f.double() - o).abs() <= 2 * (s.double() - o).abs() + 2e-6).all()


def test_triton_random_start_matches_reference_on_cuda():
    x, _, _, _, eps = cuda_inputs((65, 3, 32, 32), torch.float32, False)
    noise = torch.randn_like(x)
    radius = torch.rand(65, device="cuda")
    for f, r in zip(random_start(x, noise, radius, eps, backend="triton"), random_start_ref(x, noise, radius, eps)):
        assert torch.allclose(f, r, atol=2e-6)


def test_attack_loop_never_synchronizes_with_the_host():
    model = create_model("tiny").cuda()
    x = torch.rand(64, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    attack = L2PGD(0.5, 5, 0.1, momentum=0.9, keep_best=True, check_inputs=False)  # the range check syncs once
    attack(model, x, y)  # warm-up: cuDNN plans, kernel compilation
    with no_host_sync():
        attack(model, x, y)


def test_pgd_step_is_capturable_in_a_cuda_graph():
    x, delta, grad, velocity, eps = cuda_inputs((128, 3, 32, 32), torch.bfloat16, True)
    expected = pgd_step(x, delta, grad, eps, 0.1, velocity, 0.9)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        pgd_step(x, delta, grad, eps, 0.1, velocity, 0.9)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = pgd_step(x, delta, grad, eps, 0.1, velocity, 0.9)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, expected):
        assert torch.equal(a, b)


def test_pgd_step_under_inductor():
    x, delta, grad, velocity, eps = cuda_inputs((32, 3, 32, 32), torch.float32, False)
    step = lambda *a: pgd_step(*a, eps, 0.1, velocity, 0.9)
    compiled = torch.compile(step, fullgraph=True)
    for a, b in zip(compiled(x, delta, grad), step(x, delta, grad)):
        assert torch.allclose(a, b)


@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_ratio_step_amp_channels_last_on_cuda(amp_dtype):
    config = TrainConfig(arch="tiny", amp=True, amp_dtype=amp_dtype, steps_in=3, steps_out=3, batch_size=64)
    trainer = RatioTrainer(create_model("tiny"), config, total_steps=10, device="cuda")
    assert trainer.speed.channels_last
    x = torch.rand(64, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    z = torch.rand(64, 3, 32, 32, device="cuda")
    for _ in range(3):
        metrics = trainer.step(x, y, z)
    assert torch.isfinite(metrics["loss"])


# ---- the speed switches on the GPU -----------------------------------------------------------

@pytest.fixture(autouse=True)
def fresh_cache_and_room_to_compile(tmp_path, monkeypatch):
    """Each test measures 'auto' afresh instead of reading the machine's cache, and the tests'
    many compiled variants (fp32/bf16/fp16, several batch sizes) all stay compiled: past
    Dynamo's default limit of 8 a later test would silently run eagerly."""
    monkeypatch.setenv("RATIO_FAST_CACHE_DIR", str(tmp_path))
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(config, name, max(getattr(config, name), 64))


def tiny_config(**overrides):
    values = dict(arch="tiny", batch_size=64, steps_in=3, steps_out=5)
    values.update(overrides)
    return TrainConfig(**values)


def plain_config(**overrides):
    """fp32, eager, no graphs: what the fast paths are compared with."""
    return tiny_config(**{**dict(amp=False, compile=False, cuda_graphs=False, attack_schedule="sequential"), **overrides})


def cuda_trainer(config, model=None, seed=0):
    torch.manual_seed(seed)
    return RatioTrainer(model if model is not None else create_model("tiny"), config, total_steps=10, device="cuda")


def cuda_batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y, z = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g), torch.rand(n, 3, 32, 32, generator=g)
    return x.cuda(), y.cuda(), z.cuda()


def assert_states_close(a, b, rtol=1e-4, atol=1e-5):
    for key, value in a.model.state_dict().items():
        assert torch.allclose(value.float(), b.model.state_dict()[key].float(), rtol=rtol, atol=atol), key


@pytest.mark.parametrize("schedule", ["sequential", "streams", "concat"])
def test_cuda_graph_replays_the_eager_attacks_with_current_weights(schedule, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # both trainers' weights stay equal
    graphed = cuda_trainer(plain_config(cuda_graphs=True, attack_schedule=schedule))
    eager = cuda_trainer(plain_config(attack_schedule=schedule))
    x, y, z = cuda_batch()
    for step in range(3):
        ours = [t.clone() for t in graphed.adversarial_examples(x, y, z)]
        theirs = eager.adversarial_examples(x, y, z)
        for a, b in zip(ours, theirs):  # after a step, only a graph that reads the new weights agrees
            assert torch.allclose(a, b, atol=1e-5), (schedule, step)
        graphed.step(x, y, z)
        eager.step(x, y, z)
    assert_states_close(graphed, eager)
    (captured,) = graphed.attack_phase._calls.values()
    assert len(captured._graphs) == 1  # captured once, replayed every step


def test_streams_and_concat_compute_the_sequential_examples_on_cuda():
    x, y, z = cuda_batch()
    results = {s: cuda_trainer(plain_config(attack_schedule=s)).adversarial_examples(x, y, z)
               for s in ("sequential", "streams", "concat")}
    for a, b, c in zip(results["sequential"], results["streams"], results["concat"]):
        assert torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(a, c, atol=1e-4)


def test_compiled_graphed_attacks_match_eager_in_fp32():
    x, y, z = cuda_batch()
    fast = cuda_trainer(plain_config(compile=True, cuda_graphs=True, attack_schedule="concat"))
    eager = cuda_trainer(plain_config())
    for a, b in zip(fast.adversarial_examples(x, y, z), eager.adversarial_examples(x, y, z)):
        close = (a - b).flatten(1).abs().amax(dim=1) < 1e-3
        # Fused kernels round differently; a near-tie in the best-iterate choice may flip a sample.
        assert close.float().mean() >= 0.95


def test_fast_defaults_train_and_keep_the_measured_schedule(tmp_path):
    lines = []
    torch.manual_seed(0)
    trainer = RatioTrainer(create_model("tiny"), tiny_config(), total_steps=10, device="cuda", log=lines.append)
    s = trainer.speed
    assert (s.amp_dtype, s.cuda_graphs, s.compile, s.channels_last, s.fp32_first_conv) == (torch.bfloat16, True, True, True, True)
    x, y, z = cuda_batch()
    for _ in range(3):
        metrics = trainer.step(x, y, z)
    assert torch.isfinite(metrics["loss"]) and metrics["skipped"] == 0
    choice = trainer.schedule_choice
    assert choice.best in ("streams", "concat") and set(choice.timings_ms) == {"streams", "concat"}
    assert lines == [choice.describe()] and trainer.attack_schedule == choice.best
    assert (tmp_path / "attack_schedule.json").exists()


def test_full_fast_step_never_synchronizes_with_the_host():
    trainer = cuda_trainer(tiny_config(attack_schedule="concat"))
    x, y, z = cuda_batch()
    for _ in range(2):  # compile, capture
        trainer.step(x, y, z)
    torch.cuda.synchronize()
    with no_host_sync():
        trainer.step(x, y, z)


def test_non_finite_step_is_skipped_on_cuda():
    trainer = cuda_trainer(tiny_config(attack_schedule="concat"))
    x, y, z = cuda_batch()
    trainer.step(x, y, z)
    momentum = lambda: [trainer.optimizer.state[p]["momentum_buffer"].clone() for p in trainer.model.parameters()]
    before = ({k: v.clone() for k, v in trainer.model.state_dict().items()}, momentum(),
              {k: v.clone() for k, v in trainer.ema.model.state_dict().items()})
    poisoned = x.clone()
    poisoned[5] = float("nan")
    metrics = trainer.step(poisoned, y, z)
    assert metrics["skipped"] == 1 and trainer.skipped_in_a_row == 1
    after = (trainer.model.state_dict(), momentum(), trainer.ema.model.state_dict())
    for old, new in zip(before[0].values(), after[0].values()):
        assert torch.equal(old, new)
    for old, new in zip(before[1], after[1]):
        assert torch.equal(old, new)
    for old, new in zip(before[2].values(), after[2].values()):
        assert torch.equal(old, new)
    assert trainer.step(x, y, z)["skipped"] == 0 and trainer.skipped_in_a_row == 0


def test_fast_path_attacks_as_strongly_as_fp32(trained_tiny, synthetic_split):
    """bf16 + fp32 first conv + compile + graphs + concat against fp32 eager: same robust accuracy."""
    import copy

    x, y = synthetic_split["test"]
    z = synthetic_split["out"]
    attack = dict(batch_size=len(y), eps_in=1.5, steps_in=10, step_size_in=0.3, steps_out=10)
    accuracy = {}
    for name, config in {"fp32": plain_config(**attack), "fast": tiny_config(**attack, attack_schedule="concat"),
                         "bf16 first conv in bf16": tiny_config(**attack, attack_schedule="concat",
                                                                 fp32_first_conv=False)}.items():
        trainer = cuda_trainer(config, model=copy.deepcopy(trained_tiny))
        x_adv, _ = trainer.adversarial_examples(x, y, z)
        with torch.no_grad():
            model = trainer.model.eval()
            accuracy[name] = (model(x_adv.float()).argmax(1) == y.cuda()).float().mean().item()
    with torch.no_grad():
        clean = (trained_tiny(x).argmax(1) == y).float().mean().item()
    print("robust accuracy:", accuracy, "clean:", clean)
    assert accuracy["fp32"] < clean - 0.3
    assert abs(accuracy["fast"] - accuracy["fp32"]) <= 5 / len(y), accuracy
