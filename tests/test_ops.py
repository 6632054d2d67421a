"""Fused ops (Triton, run by its interpreter on CPU, and the native C++ kernels) against their
plain-torch references, in both norms (L2 and L-infinity); marked gpu, the compiled Triton
kernels of the L-infinity step on CUDA (the L2 ones are in tests/test_gpu.py).

Tolerance rule (flash-attention's): |fused - ref_fp64| <= 2 * |ref_same_dtype - ref_fp64| + atol,
where ref_same_dtype is the reference fed the same inputs as the kernel.
"""
import pytest
import torch

from conftest import no_host_sync
from ratio_fast.errors import UserError
from ratio_fast.ops import interpreter, native, pgd_step, pgd_step_ref, random_start, random_start_ref, sample_ball
from ratio_fast.ops import NORMS

ATOL = 2e-6
# The radii make_inputs draws eps from (uniform in [0, scale)): in L2 the ball is active in some
# samples, in L-infinity the box clips most elements of most samples (|delta| ~ 0.05, steps 0.05-0.25).
EPS_SCALE = {"l2": 1.5, "linf": 0.1}


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


@pytest.fixture(params=NORMS)
def norm(request):
    """Each threat model in turn."""
    return request.param


def to_layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view of the same values
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    return t.contiguous()


def make_inputs(shape, grad_dtype, layout, seed=0, momentum=True, norm="l2"):
    g = torch.Generator().manual_seed(seed)
    n = shape[0]
    x = torch.rand(shape, generator=g)
    delta = torch.randn(shape, generator=g) * 0.05
    grad = (torch.randn(shape, generator=g) * 1e-2).to(grad_dtype)
    velocity = torch.randn(shape, generator=g) * 1e-3 if momentum else None
    eps = torch.rand(n, generator=g) * EPS_SCALE[norm]
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


def pgd_oracle(x, delta, grad, velocity, eps, step, momentum, norm="l2"):
    dbl = lambda t: None if t is None else t.double()
    return pgd_step_ref(dbl(x), dbl(delta), dbl(grad), eps, step, dbl(velocity), momentum, norm)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (7, 3, 5, 3), (5, 3, 32, 32), (2, 1, 9, 13)])
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_pgd_step_matches_reference(fused, norm, shape, grad_dtype, layout, momentum):
    x, delta, grad, velocity, eps, step = make_inputs(shape, grad_dtype, layout, momentum=momentum > 0, norm=norm)
    out = pgd_step(x, delta, grad, eps, step, velocity, momentum, backend=fused, norm=norm)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, momentum, norm)
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, momentum, norm))


@pytest.mark.parametrize("block", [16, 64, 256])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_pgd_step_multi_tile_path_matches_reference(norm, block, momentum):
    # Tiles smaller than a sample take the sweeps used for large images (three in L2, two in L-infinity).
    x, delta, grad, velocity, eps, step = make_inputs((3, 3, 16, 16), torch.float16, "contiguous", seed=1,
                                                      momentum=momentum > 0, norm=norm)
    out = pgd_step(x, delta, grad, eps, step, velocity, momentum, backend="triton", block=block, norm=norm)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, momentum, norm)
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, momentum, norm), atol=1e-5)


def test_pgd_step_large_images_take_the_multi_tile_path_by_default(fused, norm):
    from ratio_fast.ops.tiles import MAX_SINGLE_TILE

    shape = (2, 3, 64, 64)  # 12288 elements per sample, more than one tile holds
    assert shape[1] * shape[2] * shape[3] > MAX_SINGLE_TILE
    x, delta, grad, velocity, eps, step = make_inputs(shape, torch.bfloat16, "channels_last", seed=2, norm=norm)
    out = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=fused, norm=norm)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, 0.9, norm)
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, 0.9, norm), atol=1e-5)


def test_pgd_step_keeps_layout_and_dtype(backend, norm):
    x, delta, grad, velocity, eps, step = make_inputs((3, 3, 8, 8), torch.bfloat16, "channels_last", norm=norm)
    x_adv, d, v = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=backend, norm=norm)
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
def test_pgd_step_degenerate_inputs_never_nan(backend, norm, block):
    x, delta, grad, velocity, eps, step = make_inputs((5, 3, 8, 8), torch.float16, "contiguous", seed=4, norm=norm)
    grad = grad.clone()
    grad[1] = 0  # zero gradient
    grad[2, 0, 0, 0] = float("inf")  # fp16 overflow
    grad[3, 1, 2, 3] = float("nan")
    velocity = velocity.clone()
    velocity[1] = 0  # zero gradient and zero velocity: no direction at all
    x_adv, d, v = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=backend, block=block, norm=norm)
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


def make_nan_inputs(device="cpu", norm="l2"):
    """One NaN per sample, each in another input (x, delta, velocity, grad, eps, step), and a healthy sample."""
    x, delta, grad, velocity, eps, step = make_inputs((7, 3, 5, 6), torch.float32, "contiguous", seed=13, norm=norm)
    x, delta, grad, velocity = (t.clone() for t in (x, delta, grad, velocity))
    eps = eps + {"l2": 0.1, "linf": 0.01}[norm]  # no eps 0 here: every sample can move
    nan = float("nan")
    x[0, 1, 2, 3] = nan
    delta[1, 0, 4, 5] = nan
    velocity[2, 2, 0, 0] = nan
    grad[3, 1, 1, 1] = nan
    eps[4] = nan
    step[5] = nan
    return [t.to(device) for t in (x, delta, grad, velocity, eps, step)]


def check_nan_rule(backend, device, block, norm):
    x, delta, grad, velocity, eps, step = make_nan_inputs(device, norm)
    out = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=backend, block=block, norm=norm)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, 0.9, norm)
    oracle = pgd_oracle(x, delta, grad, velocity, eps, step, 0.9, norm)
    assert_same_nans_and_close(out, same, oracle)
    assert out[0][0].isnan().sum() == 1 and out[1][0].isnan().sum() == 1, "a NaN pixel stays one NaN pixel"
    assert out[0][5].isnan().all(), "a NaN step poisons its whole sample"
    assert not any(t[6].isnan().any() for t in out), "NaN never leaks into another sample"
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(14)).to(device)
    noise[1, 0, 0, 0] = float("nan")
    radius = torch.rand(7, generator=torch.Generator().manual_seed(15)).to(device)
    out = random_start(x, noise, radius, eps, backend=backend, block=block, norm=norm)
    oracle = random_start_ref(x.double(), noise.double(), radius, eps, norm)
    assert_same_nans_and_close(out, random_start_ref(x, noise, radius, eps, norm), oracle)
    assert out[0][1].isnan().sum() == 1, "a NaN noise element stays one NaN pixel (its norm is NaN: divided by 1)"


@pytest.mark.parametrize("block", [0, 32])
def test_nan_propagates_as_in_the_reference(fused, norm, block):
    check_nan_rule(fused, "cpu", block, norm)


def test_linf_sign_keeps_nan_where_torch_sign_gives_zero(fused):
    # A NaN velocity element: torch.sign would give 0 there and freeze the pixel silently; the
    # step keeps it NaN (visible), as a NaN delta element is.
    x, delta, grad, velocity, eps, step = make_inputs((2, 3, 4, 4), torch.float32, "contiguous", seed=16, norm="linf")
    velocity = velocity.clone()
    velocity[1, 2, 3, 0] = float("nan")
    assert torch.sign(velocity[1, 2, 3, 0]) == 0
    x_adv, d, v = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=fused, norm="linf")
    for t in (x_adv, d, v):
        assert t[1, 2, 3, 0].isnan() and t.isnan().sum() == 1


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["triton", "native"])
@pytest.mark.parametrize("block", [0, 32])
def test_nan_propagates_as_in_the_reference_on_cuda(kernel, norm, block):
    require_backend(kernel, "cuda")
    check_nan_rule(kernel, "cuda", block, norm)


def test_pgd_step_without_momentum_is_textbook_pgd_l2(backend):
    x, delta, grad, _, eps, step = make_inputs((4, 3, 8, 8), torch.float32, "contiguous", seed=5, momentum=False)
    eps = torch.full((4,), 10.0)  # inactive ball
    g = grad.flatten(1)
    expected = delta + step.view(-1, 1, 1, 1) * (g / g.norm(dim=1, keepdim=True)).view_as(grad)
    expected = (x + expected).clamp(0, 1)
    x_adv, _, v = pgd_step(x, delta, grad, eps, step, backend=backend)
    assert v is None
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_pgd_step_momentum_accumulates_l1_normalized_gradient(fused, norm):
    x, delta, grad, velocity, eps, step = make_inputs((3, 3, 4, 4), torch.float32, "contiguous", seed=6, norm=norm)
    _, _, v = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=fused, norm=norm)
    g = grad.flatten(1)
    expected = 0.9 * velocity + (g / g.abs().sum(1, keepdim=True)).view_as(grad)
    assert torch.allclose(v, expected, atol=1e-7)


def linf_expected(x, delta, direction, eps, step):
    """Madry et al.'s step in plain torch ops: x' = clamp(x + clamp(delta + step * sign(direction),
    -eps, eps), 0, 1). A step times a sign is exact, so a kernel that computes this gets the same bits."""
    e, s = eps.view(-1, 1, 1, 1), step.view(-1, 1, 1, 1)
    x_adv = (x + torch.clamp(delta + s * torch.sign(direction), -e, e)).clamp(0, 1)
    return x_adv, x_adv - x


def test_linf_step_without_momentum_is_textbook_sign_pgd(backend):
    x, delta, grad, _, eps, step = make_inputs((4, 3, 8, 8), torch.float16, "channels_last", seed=5, momentum=False,
                                               norm="linf")
    x_adv, d, v = pgd_step(x, delta, grad, eps, step, backend=backend, norm="linf")
    assert v is None
    expected_x, expected_d = linf_expected(x, delta, grad.float(), eps, step)
    assert torch.equal(x_adv, expected_x) and torch.equal(d, expected_d)
    inside = (expected_d.abs() < eps.view(-1, 1, 1, 1)) & (expected_x > 0) & (expected_x < 1)
    assert 0.02 < inside.float().mean() < 0.98, "both clipped and free elements are checked"


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_linf_sign_of_zero_is_zero_so_a_tie_does_not_move(backend, momentum):
    # A zero gradient element (with momentum: and zero velocity, so v' is exactly 0) keeps its
    # delta: sign(0) = 0, for -0.0 too. Only the clip to the box then applies to it.
    x, delta, grad, velocity, eps, step = make_inputs((3, 3, 5, 7), torch.float32, "contiguous", seed=19,
                                                      momentum=momentum > 0, norm="linf")
    grad = grad.clone()
    grad[:, 1, 2] = 0.0
    grad[:, 2, 3] = -0.0
    if velocity is not None:
        velocity = velocity.clone()
        velocity[:, 1, 2] = velocity[:, 2, 3] = 0.0
    x_adv, d, v = pgd_step(x, delta, grad, eps, step, velocity, momentum, backend=backend, norm="linf")
    e = eps.view(-1, 1, 1, 1)
    kept = (x + torch.clamp(delta, -e, e)).clamp(0, 1)  # x + delta, only clipped
    for channel, row in ((1, 2), (2, 3)):
        assert torch.equal(x_adv[:, channel, row], kept[:, channel, row])
        if v is not None:
            assert (v[:, channel, row] == 0).all()
    assert (x_adv != kept).float().mean() > 0.25, "the other elements do move (eps 0 and the clip hold some)"


def test_linf_momentum_steps_along_the_sign_of_the_velocity(backend):
    # The authors' ArgminPGD in L-infinity: v' = 0.9 v + g / ||g||_1, then delta + step * sign(v').
    # The old velocity is larger than the new term, so sign(v') is not sign(g) in many elements.
    x, delta, grad, velocity, _, step = make_inputs((3, 3, 4, 4), torch.float32, "contiguous", seed=20, norm="linf")
    x, velocity = torch.full_like(x, 0.5), velocity * 50  # mid-box, and |v| ~ 0.05 > |g| / ||g||_1 ~ 0.02
    eps = torch.full((3,), 10.0)  # an inactive box
    _, d, v = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=backend, norm="linf")
    g = grad.flatten(1)
    assert torch.allclose(v, 0.9 * velocity + (g / g.abs().sum(1, keepdim=True)).view_as(grad), atol=1e-7)
    assert torch.equal(d, linf_expected(x, delta, v, eps, step)[1])
    assert (torch.sign(v) != torch.sign(grad)).float().mean() > 0.2


def test_pgd_step_scalar_eps_and_step_and_empty_batch(fused, norm):
    x, delta, grad, velocity, _, _ = make_inputs((3, 3, 4, 4), torch.float32, "contiguous", seed=7)
    a = pgd_step(x, delta, grad, 0.5, 0.1, velocity, 0.9, backend=fused, norm=norm)
    b = pgd_step_ref(x, delta, grad, torch.full((3,), 0.5), torch.full((3,), 0.1), velocity, 0.9, norm)
    for s, t in zip(a, b):
        assert torch.allclose(s, t, atol=1e-6)
    empty = torch.empty(0, 3, 4, 4)
    out = pgd_step(empty, empty, empty, 0.5, 0.1, empty, 0.9, backend=fused, norm=norm)
    assert all(t.shape == empty.shape for t in out)


def test_pgd_step_traced_by_torch_compile_without_graph_breaks(fused, norm):
    x, delta, grad, velocity, eps, step = make_inputs((3, 3, 8, 8), torch.float32, "contiguous", seed=8, norm=norm)

    def attack_step(x, delta, grad, velocity):
        return pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=fused, norm=norm)

    compiled = torch.compile(attack_step, backend="aot_eager", fullgraph=True)
    for s, t in zip(compiled(x, delta, grad, velocity), attack_step(x, delta, grad, velocity)):
        assert torch.allclose(s, t)


def test_random_start_traced_by_torch_compile_without_graph_breaks(fused, norm):
    g = torch.Generator().manual_seed(17)
    x, noise, radius = torch.rand(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g), torch.rand(3, generator=g)

    def start(x, noise, radius):
        return random_start(x, noise, radius, 0.25, backend=fused, norm=norm)

    compiled = torch.compile(start, backend="aot_eager", fullgraph=True)
    for s, t in zip(compiled(x, noise, radius), start(x, noise, radius)):
        assert torch.equal(s, t)


def test_backend_auto_uses_reference_on_cpu_and_rejects_unknown():
    x, delta, grad, velocity, eps, step = make_inputs((2, 3, 4, 4), torch.float32, "contiguous")
    auto = pgd_step(x, delta, grad, eps, step, velocity, 0.9)
    ref = pgd_step_ref(x, delta, grad, eps, step, velocity, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(auto, ref))
    with pytest.raises(ValueError, match="backend"):
        pgd_step(x, delta, grad, eps, step, backend="cuda-magic")


def test_unknown_norm_is_refused_by_every_entry_point(backend):
    x, delta, grad, velocity, eps, step = make_inputs((2, 3, 4, 4), torch.float32, "contiguous")
    for call in (lambda: pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend=backend, norm="l1"),
                 lambda: pgd_step_ref(x, delta, grad, eps, step, velocity, 0.9, norm="l1"),
                 lambda: random_start(x, delta, 1.0, eps, backend=backend, norm="l1"),
                 lambda: random_start_ref(x, delta, 1.0, eps, norm="l1"),
                 lambda: sample_ball(x, 0.5, backend=backend, norm="L-inf")):
        with pytest.raises(ValueError, match=r"norm must be one of \('l2', 'linf'\)"):
            call()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("block", [0, 16])
def test_random_start_matches_reference(fused, norm, layout, block):
    g = torch.Generator().manual_seed(9)
    x = to_layout(torch.rand(5, 3, 8, 8, generator=g), layout)
    noise = torch.randn(5, 3, 8, 8, generator=g)
    noise[4] = 0  # zero noise: no perturbation, not NaN
    radius = torch.rand(5, generator=g)
    eps = torch.tensor([0.0, 0.5, 1.0, 3.0, 1.0]) * {"l2": 1.0, "linf": 0.1}[norm]
    out = random_start(x, noise, radius, eps, backend=fused, block=block, norm=norm)
    same = random_start_ref(x, noise, radius, eps, norm)
    oracle = random_start_ref(x.double(), noise.double(), radius, eps, norm)
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


@pytest.mark.parametrize("kind", ["torch", "native"])  # Triton: equal to the reference (above); its interpreter
def test_sample_ball_linf_is_uniform_in_the_box_or_on_its_surface(kind):  # takes seconds for 4000 samples
    require_backend(kind)
    # 4 elements per sample: a wrong radius law (1, or U instead of U^(1/D)) would show in the marginals.
    x = torch.full((4000, 1, 2, 2), 0.5)  # far from the box edges for eps 0.25: no clipping
    g = torch.Generator().manual_seed(18)
    _, d_box = sample_ball(x, 0.25, generator=g, backend=kind, norm="linf")
    _, d_surface = sample_ball(x, 0.25, on_sphere=True, generator=g, backend=kind, norm="linf")
    assert d_box.abs().max() <= 0.25
    # every element uniform in [-eps, eps]: Kolmogorov-Smirnov distance to U(-1, 1) of d / eps
    u = (d_box / 0.25).flatten().sort().values
    ecdf = torch.arange(1, u.numel() + 1) / u.numel()
    assert (ecdf - (u + 1) / 2).abs().max() < 0.02
    # on the surface (AutoAttack's L-infinity start): the largest element of every sample at eps
    assert torch.equal(d_surface.flatten(1).abs().amax(1), torch.full((4000,), 0.25))


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


# --- L-infinity on CUDA (a lent GPU): the compiled Triton kernels, as tests/test_gpu.py checks the
# L2 step; the native CUDA kernels in both norms are in tests/test_native.py ---


def linf_cuda_inputs(shape, grad_dtype, seed=0, momentum=True):
    inputs = make_inputs(shape, grad_dtype, "channels_last", seed=seed, momentum=momentum, norm="linf")
    return [None if t is None else t.cuda() for t in inputs]  # .cuda() keeps the memory format


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(129, 3, 32, 32), (2, 3, 96, 96)])  # one tile; the multi-tile path
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_linf_triton_step_matches_reference_on_cuda(shape, grad_dtype, momentum):
    x, delta, grad, velocity, eps, step = linf_cuda_inputs(shape, grad_dtype, momentum=momentum > 0)
    out = pgd_step(x, delta, grad, eps, step, velocity, momentum, backend="triton", norm="linf")
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, momentum, "linf")
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, momentum, "linf"))
    assert out[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(65, 3, 32, 32), (2, 3, 96, 96)])
def test_linf_triton_random_start_matches_reference_on_cuda(shape):
    g = torch.Generator().manual_seed(21)
    x, noise = torch.rand(shape, generator=g).cuda(), (torch.rand(shape, generator=g) * 2 - 1).cuda()
    radius, eps = torch.rand(shape[0], generator=g).cuda(), torch.rand(shape[0], generator=g).cuda() * 0.1
    out = random_start(x, noise, radius, eps, backend="triton", norm="linf")
    same = random_start_ref(x, noise, radius, eps, "linf")
    assert_close_to_oracle(out, same, random_start_ref(x.double(), noise.double(), radius, eps, "linf"))


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["triton", "native"])
def test_linf_attack_iterations_never_synchronize_with_the_host(kernel):
    require_backend(kernel, "cuda")
    x, _, grad, velocity, eps, step = linf_cuda_inputs((64, 3, 32, 32), torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(0)

    def iterations():
        _, d = sample_ball(x, eps, generator=g, backend=kernel, norm="linf")
        v = velocity
        for _ in range(3):
            _, d, v = pgd_step(x, d, grad, eps, step, v, 0.9, backend=kernel, norm="linf")
        return d

    iterations()  # warm-up: compilation, the library load
    with no_host_sync():
        iterations()


@pytest.mark.gpu
def test_linf_triton_step_is_captured_by_cuda_graphs():
    x, delta, grad, velocity, eps, step = linf_cuda_inputs((128, 3, 32, 32), torch.bfloat16)
    static = [t.clone() for t in (x, delta, grad, velocity)]

    def attack_step():
        return pgd_step(*static[:3], eps, step, static[3], 0.9, backend="triton", norm="linf")

    side = torch.cuda.Stream()  # warm-up on a side stream, as capture requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        attack_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = attack_step()
    fresh = linf_cuda_inputs((128, 3, 32, 32), torch.bfloat16, seed=5)[:4]
    for s, t in zip(static, fresh):  # a replay must compute with what the static tensors hold now
        s.copy_(t)
    graph.replay()
    expected = pgd_step(*fresh[:3], eps, step, fresh[3], 0.9, backend="triton", norm="linf")
    assert all(torch.equal(c, e) for c, e in zip(captured, expected))


@pytest.mark.gpu
def test_linf_step_under_inductor():
    x, delta, grad, velocity, eps, step = linf_cuda_inputs((32, 3, 32, 32), torch.float32)
    attack_step = lambda x, delta, grad: pgd_step(x, delta, grad, eps, step, velocity, 0.9, norm="linf")
    compiled = torch.compile(attack_step, fullgraph=True)
    for c, e in zip(compiled(x, delta, grad), attack_step(x, delta, grad)):
        assert torch.equal(c, e)
