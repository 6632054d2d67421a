"""Fused ops (Triton, run by its interpreter on CPU, and the native C++ kernels) against their
plain-torch references.

Tolerance rule (flash-attention's): |fused - ref_fp64| <= 2 * |ref_same_dtype - ref_fp64| + atol,
where ref_same_dtype is the reference fed the same inputs as the kernel.
"""
import pytest
import torch

from ratio_fast.errors import UserError
from ratio_fast.ops import interpreter, native, pgd_step, pgd_step_ref, random_start, random_start_ref, sample_ball

ATOL = 2e-6


def require_backend(backend, device="cpu"):
    """Skip 'native' only where the environment disabled its build; a missing library fails."""
    if backend != "native":
        return
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    path = native.library_path(kind)
    if path.exists():
        return
    if native.build_disabled(kind):
        pytest.skip(f"native {kind} build disabled by {native.NO_NATIVE_ENV} / {native.NO_CUDA_ENV}")
    pytest.fail(f"{path} was not built although the environment does not disable it: run `pip install -e .`")


@pytest.fixture(params=["triton", "native"])
def fused(request):
    """Each fused backend in turn."""
    require_backend(request.param)
    return request.param


@pytest.fixture(params=["triton", "native", "torch"])
def backend(request):
    """Every backend in turn, the reference included."""
    require_backend(request.param)
    return request.param


def to_layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view of the same values
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    return t.contiguous()


def make_inputs(shape, grad_dtype, layout, seed=0, momentum=True):
    g = torch.Generator().manual_seed(seed)
    n = shape[0]
    x = torch.rand(shape, generator=g)
    delta = torch.randn(shape, generator=g) * 0.05
    grad = (torch.randn(shape, generator=g) * 1e-2).to(grad_dtype)
    velocity = torch.randn(shape, generator=g) * 1e-3 if momentum else None
    eps = torch.rand(n, generator=g) * 1.5
    eps[0] = 0.0  # eps 0 in every batch
    step = 0.05 + torch.rand(n, generator=g) * 0.2
    tensors = [to_layout(t, layout) if t is not None else None for t in (x, delta, grad, velocity)]
    return (*tensors, eps, step)


def assert_close_to_oracle(fused, same, oracle, atol=ATOL):
    for f, s, o in zip(fused, same, oracle):
        if o is None:
            assert f is None and s is None
            continue
        assert f.shape == o.shape
        assert torch.isfinite(f).all()
        err = (f.double() - o).abs()
        bound = 2 * (s.double() - o).abs() + atol
        assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"


def pgd_oracle(x, delta, grad, velocity, eps, step, momentum):
    dbl = lambda t: None if t is None else t.double()
    return pgd_step_ref(dbl(x), dbl(delta), dbl(grad), eps, step, dbl(velocity), momentum)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (7, 3, 5, 3), (5, 3, 32, 32), (2, 1, 9, 13)])
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_pgd_step_matches_reference(fused, shape, grad_dtype, layout, momentum):
    x, delta, grad, velocity, eps, step = make_inputs(shape, grad_dtype, layout, momentum=momentum > 0)
    out = pgd_step(x, delta, grad, eps, step, velocity, momentum, backend=fused)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, momentum)
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, momentum))


@pytest.mark.parametrize("block", [16, 64, 256])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_pgd_step_multi_tile_path_matches_reference(block, momentum):
    # Tiles smaller than a sample take the three-sweep path used for large images.
    x, delta, grad, velocity, eps, step = make_inputs((3, 3, 16, 16), torch.float16, "contiguous", seed=1,
                                                      momentum=momentum > 0)
    out = pgd_step(x, delta, grad, eps, step, velocity, momentum, backend="triton", block=block)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, momentum)
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, momentum), atol=1e-5)


def test_pgd_step_large_images_take_the_multi_tile_path_by_default(fused):
    from ratio_fast.ops.tiles import MAX_SINGLE_TILE

    shape = (2, 3, 64, 64)  # 12288 elements per sample, more than one tile holds
    assert shape[1] * shape[2] * shape[3] > MAX_SINGLE_TILE
    x, delta, grad, velocity, eps, step = make_inputs(shape, torch.bfloat16, "channels_last", seed=2)
    out = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=fused)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, 0.9)
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, 0.9), atol=1e-5)


def test_pgd_step_keeps_layout_and_dtype(backend):
    x, delta, grad, velocity, eps, step = make_inputs((3, 3, 8, 8), torch.bfloat16, "channels_last")
    x_adv, d, v = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=backend)
    assert x_adv.dtype == x.dtype and d.dtype == torch.float32 and v.dtype == torch.float32
    for t in (x_adv, d, v):
        assert t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("block", [0, 32])
def test_pgd_step_respects_ball_and_box(backend, block):
    x, delta, grad, velocity, eps, step = make_inputs((6, 3, 8, 8), torch.float32, "contiguous", seed=3)
    x = torch.full_like(x, 0.5)  # mid-box: the projection, not the clipping, bounds the norm
    grad = grad * 1e3
    step = step * 20  # big steps so the projection is active
    x_adv, d, _ = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=backend, block=block)
    norms = d.flatten(1).norm(dim=1)
    assert (norms <= eps + 1e-5).all()
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    assert torch.allclose(x + d, x_adv, atol=1e-6)
    assert (norms[1:] > 0.99 * eps[1:]).all(), "large steps should reach the sphere"


@pytest.mark.parametrize("block", [0, 32])
def test_pgd_step_degenerate_inputs_never_nan(backend, block):
    x, delta, grad, velocity, eps, step = make_inputs((5, 3, 8, 8), torch.float16, "contiguous", seed=4)
    grad = grad.clone()
    grad[1] = 0  # zero gradient
    grad[2, 0, 0, 0] = float("inf")  # fp16 overflow
    grad[3, 1, 2, 3] = float("nan")
    velocity = velocity.clone()
    velocity[1] = 0  # zero gradient and zero velocity: no direction at all
    x_adv, d, v = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=backend, block=block)
    for t in (x_adv, d, v):
        assert torch.isfinite(t).all()
    # eps 0 (sample 0): no perturbation at all
    assert d[0].abs().max() == 0 and torch.equal(x_adv[0], x[0])
    # zero direction (sample 1): delta only projected and clipped, velocity stays 0
    assert v[1].abs().max() == 0
    # non-finite gradient (samples 2, 3): iterate and velocity kept as they were
    for i in (2, 3):
        assert torch.allclose(d[i], (x[i] + delta[i]).clamp(0, 1) - x[i], atol=1e-7)
        assert torch.equal(v[i], velocity[i])
    # the healthy sample still moves
    assert not torch.allclose(d[4], delta[4])


def without_nans(tensors):
    return [None if t is None else torch.where(t.isnan(), 0.0, t) for t in tensors]


def assert_same_nans_and_close(fused, same, oracle):
    """NaN exactly where the oracle has it (the NaN rule of pgd_step), the rest as assert_close_to_oracle."""
    for f, o in zip(fused, oracle):
        assert (f is None) == (o is None)
        if o is not None:
            wrong = (f.isnan() != o.isnan()).nonzero().tolist()
            assert not wrong, f"{len(wrong)} elements NaN on one side only, first {wrong[:3]}"
    assert_close_to_oracle(without_nans(fused), without_nans(same), without_nans(oracle))


def make_nan_inputs(device="cpu"):
    """One NaN per sample, each in another input (x, delta, velocity, grad, eps, step), and a healthy sample."""
    x, delta, grad, velocity, eps, step = make_inputs((7, 3, 5, 6), torch.float32, "contiguous", seed=13)
    x, delta, grad, velocity = (t.clone() for t in (x, delta, grad, velocity))
    eps = eps + 0.1  # no eps 0 here: every sample can move
    nan = float("nan")
    x[0, 1, 2, 3] = nan
    delta[1, 0, 4, 5] = nan
    velocity[2, 2, 0, 0] = nan
    grad[3, 1, 1, 1] = nan
    eps[4] = nan
    step[5] = nan
    return [t.to(device) for t in (x, delta, grad, velocity, eps, step)]


def check_nan_rule(backend, device, block):
    x, delta, grad, velocity, eps, step = make_nan_inputs(device)
    out = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=backend, block=block)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, 0.9)
    oracle = pgd_oracle(x, delta, grad, velocity, eps, step, 0.9)
    assert_same_nans_and_close(out, same, oracle)
    assert out[0][0].isnan().sum() == 1 and out[1][0].isnan().sum() == 1, "a NaN pixel stays one NaN pixel"
    assert out[0][5].isnan().all(), "a NaN step poisons its whole sample"
    assert not any(t[6].isnan().any() for t in out), "NaN never leaks into another sample"
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(14)).to(device)
    noise[1, 0, 0, 0] = float("nan")
    radius = torch.rand(7, generator=torch.Generator().manual_seed(15)).to(device)
    out = random_start(x, noise, radius, eps, backend=backend, block=block)
    oracle = random_start_ref(x.double(), noise.double(), radius, eps)
    assert_same_nans_and_close(out, random_start_ref(x, noise, radius, eps), oracle)


@pytest.mark.parametrize("block", [0, 32])
def test_nan_propagates_as_in_the_reference(fused, block):
    check_nan_rule(fused, "cpu", block)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["triton", "native"])
@pytest.mark.parametrize("block", [0, 32])
def test_nan_propagates_as_in_the_reference_on_cuda(kernel, block):
    require_backend(kernel, "cuda")
    check_nan_rule(kernel, "cuda", block)


def test_pgd_step_without_momentum_is_textbook_pgd_l2(backend):
    x, delta, grad, _, eps, step = make_inputs((4, 3, 8, 8), torch.float32, "contiguous", seed=5, momentum=False)
    eps = torch.full((4,), 10.0)  # inactive ball
    g = grad.flatten(1)
    expected = delta + step.view(-1, 1, 1, 1) * (g / g.norm(dim=1, keepdim=True)).view_as(grad)
    expected = (x + expected).clamp(0, 1)
    x_adv, _, v = pgd_step(x, delta, grad, eps, step, backend=backend)
    assert v is None
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_pgd_step_momentum_accumulates_l1_normalized_gradient(fused):
    x, delta, grad, velocity, eps, step = make_inputs((3, 3, 4, 4), torch.float32, "contiguous", seed=6)
    _, _, v = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=fused)
    g = grad.flatten(1)
    expected = 0.9 * velocity + (g / g.abs().sum(1, keepdim=True)).view_as(grad)
    assert torch.allclose(v, expected, atol=1e-7)


def test_pgd_step_scalar_eps_and_step_and_empty_batch(fused):
    x, delta, grad, velocity, _, _ = make_inputs((3, 3, 4, 4), torch.float32, "contiguous", seed=7)
    a = pgd_step(x, delta, grad, 0.5, 0.1, velocity, 0.9, backend=fused)
    b = pgd_step_ref(x, delta, grad, torch.full((3,), 0.5), torch.full((3,), 0.1), velocity, 0.9)
    for s, t in zip(a, b):
        assert torch.allclose(s, t, atol=1e-6)
    empty = torch.empty(0, 3, 4, 4)
    out = pgd_step(empty, empty, empty, 0.5, 0.1, empty, 0.9, backend=fused)
    assert all(t.shape == empty.shape for t in out)


def test_pgd_step_traced_by_torch_compile_without_graph_breaks(fused):
    x, delta, grad, velocity, eps, step = make_inputs((3, 3, 8, 8), torch.float32, "contiguous", seed=8)

    def attack_step(x, delta, grad, velocity):
        return pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=fused)

    compiled = torch.compile(attack_step, backend="aot_eager", fullgraph=True)
    for s, t in zip(compiled(x, delta, grad, velocity), attack_step(x, delta, grad, velocity)):
        assert torch.allclose(s, t)


def test_backend_auto_uses_reference_on_cpu_and_rejects_unknown():
    x, delta, grad, velocity, eps, step = make_inputs((2, 3, 4, 4), torch.float32, "contiguous")
    auto = pgd_step(x, delta, grad, eps, step, velocity, 0.9)
    ref = pgd_step_ref(x, delta, grad, eps, step, velocity, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(auto, ref))
    with pytest.raises(ValueError, match="backend"):
        pgd_step(x, delta, grad, eps, step, backend="cuda-magic")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("block", [0, 16])
def test_random_start_matches_reference(fused, layout, block):
    g = torch.Generator().manual_seed(9)
    x = to_layout(torch.rand(5, 3, 8, 8, generator=g), layout)
    noise = torch.randn(5, 3, 8, 8, generator=g)
    noise[4] = 0  # zero noise: no perturbation, not NaN
    radius = torch.rand(5, generator=g)
    eps = torch.tensor([0.0, 0.5, 1.0, 3.0, 1.0])
    out = random_start(x, noise, radius, eps, backend=fused, block=block)
    same = random_start_ref(x, noise, radius, eps)
    oracle = random_start_ref(x.double(), noise.double(), radius, eps)
    assert_close_to_oracle(out, same, oracle)
    assert out[1][4].abs().max() == 0 and out[1][0].abs().max() == 0


def test_sample_ball_inside_ball_and_on_sphere(backend):
    x = torch.full((64, 3, 8, 8), 0.5)  # far from the box edges for eps 0.5: no clipping
    g = torch.Generator().manual_seed(10)
    _, d_ball = sample_ball(x, 0.5, generator=g, backend=backend)
    _, d_sphere = sample_ball(x, 0.5, on_sphere=True, generator=g, backend=backend)
    ball, sphere = d_ball.flatten(1).norm(dim=1), d_sphere.flatten(1).norm(dim=1)
    assert torch.allclose(sphere, torch.full_like(sphere, 0.5), atol=1e-5)
    # uniform in a 192-dimensional ball: radius eps * u^(1/192), mean eps * 192/193, never on the sphere
    assert (ball < 0.5).all()
    assert abs(ball.mean().item() - 0.5 * 192 / 193) < 0.004


@pytest.mark.parametrize("triton_version, numpy_version, broken", [
    ("3.6.0", "2.4.6", True), ("3.4.0", "2.4.0", True), ("3.6.0", "2.3.5", False), ("3.6.0", "1.26.4", False),
    ("3.7.0", "2.4.6", False), ("3.9.0+git1a2b3c", "2.5.0", False),
])
def test_known_broken_interpreter_versions(triton_version, numpy_version, broken):
    assert (interpreter.interpreter_defect(triton_version, numpy_version) is not None) == broken


def test_broken_interpreter_is_a_one_line_user_error(monkeypatch):
    import numpy
    import triton

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.0")
    x, delta, grad, velocity, eps, step = make_inputs((2, 3, 4, 4), torch.float32, "contiguous")
    for launch in (lambda: pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend="triton"),
                   lambda: random_start(x, delta, 1.0, eps, backend="triton")):
        with pytest.raises(UserError, match=r"numpy 2\.4\.0.*install 'numpy<2\.4' or 'triton>=3\.7'"):
            launch()
