"""Checks that need a CUDA device: they skip on CPU-only machines (CI) and run on a lent GPU.

The same contracts as the CPU tests, on the real backend: the compiled Triton kernels against
the reference, no host synchronization in the attack loop, capture in a CUDA graph, and a
bf16 channels_last RATIO step.
"""
import pytest
import torch

from ratio_fast import L2PGD, RatioTrainer, TrainConfig, create_model
from ratio_fast.ops import pgd_step, pgd_step_ref, random_start, random_start_ref

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
    attack = L2PGD(0.5, 5, 0.1, momentum=0.9, keep_best=True)
    attack(model, x, y)  # warm-up: cuDNN plans, kernel compilation
    torch.cuda.set_sync_debug_mode("error")
    try:
        attack(model, x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


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
    assert trainer.uses_channels_last
    x = torch.rand(64, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    z = torch.rand(64, 3, 32, 32, device="cuda")
    for _ in range(3):
        metrics = trainer.step(x, y, z)
    assert torch.isfinite(metrics["loss"])
