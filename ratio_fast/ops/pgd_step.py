"""The projected PGD step in L2 or L-infinity, fused: one kernel launch per attack iteration.

Per sample i (all math in fp32, whatever the gradient's dtype), norm="l2":

    v'  = momentum * v + g / ||g||_1          (with momentum 0: just the direction of g)
    d'  = d + step_i * v' / ||v'||_2           (normalized-gradient step)
    d'  = d' * min(1, eps_i / ||d'||_2)         (projection onto the L2 ball)
    x'  = clamp(x + d', 0, 1);  d' = x' - x     (box constraint)

norm="linf", the same velocity; the step is the L-infinity "normalization" of the direction, its sign:

    d'  = d + step_i * sign(v')                (sign(g) without a velocity buffer)
    d'  = clamp(d', -eps_i, eps_i)             (projection onto the L-infinity box)
    x'  = clamp(x + d', 0, 1);  d' = x' - x     (box constraint)

With momentum 0 this is textbook PGD (in L-infinity, Madry et al.'s sign step); with momentum
0.9 it is the authors' ArgminPGD step (utils/adversarial_attacks/argmin_pgd.py: velocity of the
L1-normalized gradient, normalized in the attack's norm). sign(0) is 0: an element whose
gradient (or, with momentum, velocity) is exactly 0 does not move.

A sample whose gradient is not finite keeps d and v (so fp16 overflow cannot poison an
iterate); zero gradients, zero velocity and eps 0 give zero steps, never NaN. Any other NaN
propagates the same way on every backend (the rule is in `pgd_step`'s docstring).

Contents: `pgd_step_ref` (plain torch, the test oracle and CPU path), the Triton kernels (per
norm, one for samples that fit a single tile and one that loops over tiles, sharing their
per-element steps) and their launcher, the custom op `ratio_fast::pgd_step` (so torch.compile
traces it) that runs a Triton kernel or the native one (kernels/, through `native.py`), and
`pgd_step`, the dispatch. One op for both norms: they take the same tensors and follow the same
NaN rule, so an attack passes `norm` through and nothing else changes; each norm has its own
kernels, since the L2 step needs two more reductions (so three sweeps over a large sample, where
the L-infinity step needs two).
"""
from __future__ import annotations

import torch

from . import native
from ._common import check_norm, compute_dtype, empty_in_layout, per_sample, resolve_backend, safe_div, sample_layout
from .interpreter import require_working_interpreter
from .tiles import pgd_step_tile

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path works without Triton
    triton = None
else:
    from ._common import clip_to_box, load_f32, norm_or_one, sign_keeping_nan, store_in_box


def pgd_step_ref(x, delta, grad, eps, step_size, velocity=None, momentum=0.0, norm="l2"):
    """Plain-torch PGD step in `norm`. Returns (x_adv, delta, velocity); velocity is None if not given."""
    check_norm(norm)
    n = x.shape[0]
    acc = compute_dtype(x, delta, grad)
    x32 = x.to(acc).reshape(n, -1)
    d = delta.to(acc).reshape(n, -1)
    g = grad.to(acc).reshape(n, -1)
    eps = per_sample(eps, n, x).to(acc)[:, None]
    step = per_sample(step_size, n, x).to(acc)[:, None]

    l1 = g.abs().sum(1, keepdim=True)
    finite = torch.isfinite(l1)
    v_new = safe_div(torch.where(finite, g, 0.0), l1)
    if velocity is not None:
        v = velocity.to(acc).reshape(n, -1)
        v_new = momentum * v + v_new
    if norm == "linf":
        d_new = _clip_to_box_ref(d + step * _sign_keeping_nan_ref(v_new if velocity is not None else g), eps)
    else:
        d_new = d + step * safe_div(v_new, v_new.norm(dim=1, keepdim=True))
        d_norm = d_new.norm(dim=1, keepdim=True)
        d_new = d_new * torch.where(d_norm > eps, eps / torch.where(d_norm > 0, d_norm, 1.0), 1.0)
    d_new = torch.where(finite, d_new, d)
    x_adv = (x32 + d_new).clamp(0.0, 1.0)

    layout = sample_layout(x)
    shape = x.shape
    x_out = x_adv.reshape(shape).to(x.dtype).contiguous(memory_format=layout)
    d_out = (x_adv - x32).reshape(shape).contiguous(memory_format=layout)
    v_out = None
    if velocity is not None:
        v_out = torch.where(finite, v_new, v).reshape(shape).contiguous(memory_format=layout)
    return x_out, d_out, v_out


def _sign_keeping_nan_ref(v):
    """torch.sign, with NaN kept where torch.sign gives 0 (the NaN rule). The kernels return v itself
    at -0 where this gives +0: a step of -0 or +0 leaves every output the same."""
    return torch.where(v.isnan(), v, v.sign())


def _clip_to_box_ref(d, eps):
    """d clamped to [-eps, eps], NaN in d kept; a NaN eps leaves d unprojected, as the kernels'
    comparisons do (torch.clamp with a NaN bound would make the whole sample NaN)."""
    e = torch.where(eps.isnan(), float("inf"), eps)
    return d.clamp(-e, e)


if triton is not None:

    @triton.jit
    def _is_finite(l1):
        """Whether a sample's gradient is finite, from its L1 norm: where it is not (fp16 overflow),
        the sample keeps its delta and velocity, the NaN rule's one exception."""
        return (l1 == l1) & (l1 < float("inf"))

    @triton.jit
    def _with_momentum(direction, vel_ptr, idx, mask, momentum, HAS_VELOCITY: tl.constexpr):
        """(v', v): v' = momentum * v + direction, and the old velocity v (zeros without a buffer, v' = direction)."""
        v_old = tl.zeros_like(direction)
        v_new = direction
        if HAS_VELOCITY:
            v_old = load_f32(vel_ptr, idx, mask)
            v_new = momentum * v_old + direction
        return v_new, v_old

    @triton.jit
    def _l2_norm(v):
        """||v||_2 of a whole sample held in one tile."""
        return tl.sqrt(tl.sum(v * v, axis=0))

    @triton.jit
    def _projection_scale(d_norm, eps):
        """The factor that projects d' onto the ball of radius eps: 1 inside it, 0 for eps 0."""
        return tl.where(d_norm > eps, eps / norm_or_one(d_norm), 1.0)

    @triton.jit
    def _store_step(x_out_ptr, delta_out_ptr, vel_out_ptr, idx, mask, x, d_new, v_new, v_old, finite,
                    HAS_VELOCITY: tl.constexpr):
        """x' and d' through the box constraint, and v' (v kept where the gradient is not finite)."""
        store_in_box(x_out_ptr, delta_out_ptr, idx, mask, x, d_new)
        if HAS_VELOCITY:
            tl.store(vel_out_ptr + idx, tl.where(finite, v_new, v_old), mask=mask)

    @triton.jit
    def _pgd_step_single_tile_kernel(x_ptr, delta_ptr, grad_ptr, vel_ptr, eps_ptr, step_ptr,
                                     x_out_ptr, delta_out_ptr, vel_out_ptr,
                                     D, momentum, HAS_VELOCITY: tl.constexpr, BLOCK: tl.constexpr):
        """A sample of D <= BLOCK elements, all in registers: one read of each input, one write of each output."""
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * D  # every array is indexed as (ptr + base) + offs: 32-bit offsets
        offs = tl.arange(0, BLOCK)
        mask = offs < D
        eps = tl.load(eps_ptr + pid)
        step = tl.load(step_ptr + pid)
        g = load_f32(grad_ptr + base, offs, mask)
        d = load_f32(delta_ptr + base, offs, mask)
        x = load_f32(x_ptr + base, offs, mask)
        l1 = tl.sum(tl.abs(g), axis=0)
        finite = _is_finite(l1)
        v, v_old = _with_momentum(tl.where(finite, g, 0.0) / norm_or_one(l1), vel_ptr + base, offs, mask, momentum,
                                  HAS_VELOCITY)
        d_new = d + step * (v / norm_or_one(_l2_norm(v)))
        d_new = tl.where(finite, d_new * _projection_scale(_l2_norm(d_new), eps), d)
        _store_step(x_out_ptr + base, delta_out_ptr + base, vel_out_ptr + base, offs, mask, x, d_new, v, v_old, finite,
                    HAS_VELOCITY)

    @triton.jit
    def _sample_l1(grad_ptr, D, BLOCK: tl.constexpr):
        """||g||_1 of a sample larger than a tile: the first sweep over its tiles."""
        l1_acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            l1_acc += tl.abs(load_f32(grad_ptr, offs, offs < D))
        return tl.sum(l1_acc, axis=0)

    @triton.jit
    def _inverse_l1(l1, finite):
        """1 / ||g||_1; 0 for a zero or non-finite gradient, whose velocity term is then 0, not 0 * inf."""
        return tl.where(finite & (l1 > 0), 1.0 / norm_or_one(l1), 0.0)

    @triton.jit
    def _tile_velocity(grad_ptr, vel_ptr, idx, mask, finite, inv_l1, momentum, HAS_VELOCITY: tl.constexpr):
        """(v', v) of one tile, from the gradient (0 in a sample whose gradient is not finite)."""
        direction = tl.where(finite, load_f32(grad_ptr, idx, mask), 0.0) * inv_l1
        return _with_momentum(direction, vel_ptr, idx, mask, momentum, HAS_VELOCITY)

    @triton.jit
    def _pgd_step_multi_tile_kernel(x_ptr, delta_ptr, grad_ptr, vel_ptr, eps_ptr, step_ptr,
                                    x_out_ptr, delta_out_ptr, vel_out_ptr,
                                    D, momentum, HAS_VELOCITY: tl.constexpr, BLOCK: tl.constexpr):
        """A sample larger than a tile, in three sweeps over its tiles. ||d'||^2 is expanded as
        ||d||^2 + 2 s <d, v>/||v|| + s^2 (v/||v|| has unit norm, or is 0), so sweep 2 gathers
        every norm the projection needs and sweep 3 writes the result."""
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * D  # every array is indexed as (ptr + base) + offs: 32-bit offsets
        eps = tl.load(eps_ptr + pid)
        step = tl.load(step_ptr + pid)
        l1 = _sample_l1(grad_ptr + base, D, BLOCK)
        finite = _is_finite(l1)
        inv_l1 = _inverse_l1(l1, finite)

        vv_acc = tl.zeros([BLOCK], dtype=tl.float32)
        dv_acc = tl.zeros([BLOCK], dtype=tl.float32)
        dd_acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < D
            v, _ = _tile_velocity(grad_ptr + base, vel_ptr + base, offs, mask, finite, inv_l1, momentum, HAS_VELOCITY)
            d = load_f32(delta_ptr + base, offs, mask)
            vv_acc += v * v
            dv_acc += d * v
            dd_acc += d * d
        vv = tl.sum(vv_acc, axis=0)
        step_dir = step / norm_or_one(tl.sqrt(vv))  # zero direction: v = 0, no step
        d_norm_sq = tl.sum(dd_acc, axis=0) + 2.0 * step_dir * tl.sum(dv_acc, axis=0) + step_dir * step_dir * vv
        d_norm = tl.sqrt(tl.where(d_norm_sq < 0, 0.0, d_norm_sq))  # rounding below 0; NaN kept
        scale = _projection_scale(d_norm, eps)

        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < D
            v, v_old = _tile_velocity(grad_ptr + base, vel_ptr + base, offs, mask, finite, inv_l1, momentum,
                                      HAS_VELOCITY)
            d = load_f32(delta_ptr + base, offs, mask)
            x = load_f32(x_ptr + base, offs, mask)
            d_new = tl.where(finite, (d + step_dir * v) * scale, d)
            _store_step(x_out_ptr + base, delta_out_ptr + base, vel_out_ptr + base, offs, mask, x, d_new, v, v_old,
                        finite, HAS_VELOCITY)

    # --- L-infinity: one reduction (||g||_1, for the velocity and the NaN rule), then elementwise ---

    @triton.jit
    def _linf_store_tile(x_out_ptr, delta_out_ptr, vel_ptr, vel_out_ptr, idx, mask, x, d, g, finite, inv_l1, eps,
                         step, momentum, HAS_VELOCITY: tl.constexpr):
        """One tile of the L-infinity step, stored: d' = clamp(d + step * sign(v' or g), -eps, eps), then
        the box constraint (d and v kept in a sample whose gradient is not finite)."""
        v, v_old = _with_momentum(tl.where(finite, g, 0.0) * inv_l1, vel_ptr, idx, mask, momentum, HAS_VELOCITY)
        if HAS_VELOCITY:
            direction = v
        else:
            direction = g  # textbook PGD: sign(g), not the sign of g / ||g||_1, which can underflow to 0
        d_new = tl.where(finite, clip_to_box(d + step * sign_keeping_nan(direction), eps), d)
        _store_step(x_out_ptr, delta_out_ptr, vel_out_ptr, idx, mask, x, d_new, v, v_old, finite, HAS_VELOCITY)

    @triton.jit
    def _pgd_step_linf_single_tile_kernel(x_ptr, delta_ptr, grad_ptr, vel_ptr, eps_ptr, step_ptr,
                                          x_out_ptr, delta_out_ptr, vel_out_ptr,
                                          D, momentum, HAS_VELOCITY: tl.constexpr, BLOCK: tl.constexpr):
        """The L-infinity step of a sample of D <= BLOCK elements, all in registers."""
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * D  # every array is indexed as (ptr + base) + offs: 32-bit offsets
        offs = tl.arange(0, BLOCK)
        mask = offs < D
        eps = tl.load(eps_ptr + pid)
        step = tl.load(step_ptr + pid)
        g = load_f32(grad_ptr + base, offs, mask)
        d = load_f32(delta_ptr + base, offs, mask)
        x = load_f32(x_ptr + base, offs, mask)
        l1 = tl.sum(tl.abs(g), axis=0)
        finite = _is_finite(l1)
        _linf_store_tile(x_out_ptr + base, delta_out_ptr + base, vel_ptr + base, vel_out_ptr + base, offs, mask, x, d,
                         g, finite, _inverse_l1(l1, finite), eps, step, momentum, HAS_VELOCITY)

    @triton.jit
    def _pgd_step_linf_multi_tile_kernel(x_ptr, delta_ptr, grad_ptr, vel_ptr, eps_ptr, step_ptr,
                                         x_out_ptr, delta_out_ptr, vel_out_ptr,
                                         D, momentum, HAS_VELOCITY: tl.constexpr, BLOCK: tl.constexpr):
        """The L-infinity step of a sample larger than a tile, in two sweeps: ||g||_1, then each tile."""
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * D  # every array is indexed as (ptr + base) + offs: 32-bit offsets
        eps = tl.load(eps_ptr + pid)
        step = tl.load(step_ptr + pid)
        l1 = _sample_l1(grad_ptr + base, D, BLOCK)
        finite = _is_finite(l1)
        inv_l1 = _inverse_l1(l1, finite)
        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < D
            _linf_store_tile(x_out_ptr + base, delta_out_ptr + base, vel_ptr + base, vel_out_ptr + base, offs, mask,
                             load_f32(x_ptr + base, offs, mask), load_f32(delta_ptr + base, offs, mask),
                             load_f32(grad_ptr + base, offs, mask), finite, inv_l1, eps, step, momentum, HAS_VELOCITY)

    # (norm, whether a sample fits one tile) -> kernel
    _KERNELS = {
        ("l2", True): _pgd_step_single_tile_kernel, ("l2", False): _pgd_step_multi_tile_kernel,
        ("linf", True): _pgd_step_linf_single_tile_kernel, ("linf", False): _pgd_step_linf_multi_tile_kernel,
    }

    def _launch_triton(x, delta, grad, velocity, eps, step_size, momentum, norm, block, x_out, delta_out, vel_out):
        n, d_elems = x.shape[0], x.numel() // x.shape[0]
        block, num_warps = pgd_step_tile(d_elems, block)
        kernel = _KERNELS[norm, block >= d_elems]
        if not x.is_cuda:  # CPU tensors run in Triton's interpreter (or are compiled ahead of time)
            require_working_interpreter(kernel)
        kernel[(n,)](
            x, delta, grad, velocity if velocity is not None else delta, eps, step_size,  # no velocity: never read
            x_out, delta_out, vel_out,
            d_elems, momentum,
            HAS_VELOCITY=velocity is not None, BLOCK=block, num_warps=num_warps,
        )


# An opaque custom op (not triton_op): torch.compile treats the launch as one node with the fake
# implementation below, which works the same for GPU launches, interpreter runs and native kernels.
@torch.library.custom_op("ratio_fast::pgd_step", mutates_args=())
def _pgd_step_op(
    x: torch.Tensor,
    delta: torch.Tensor,
    grad: torch.Tensor,
    velocity: torch.Tensor | None,
    eps: torch.Tensor,
    step_size: torch.Tensor,
    momentum: float,
    norm: str,
    kernel: str,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused step in `norm` by `kernel` ('triton' or 'native'); inputs are made dense in x's layout first."""
    layout = sample_layout(x)
    x, delta, grad = (t.contiguous(memory_format=layout) for t in (x, delta, grad))
    if velocity is not None:
        velocity = velocity.contiguous(memory_format=layout)
    outputs = _empty_outputs(x, velocity)
    if x.numel() == 0:
        return outputs
    launch = native.pgd_step_into if kernel == "native" else _launch_triton
    launch(x, delta, grad, velocity, eps, step_size, momentum, norm, block, *outputs)
    return outputs


@_pgd_step_op.register_fake
def _(x, delta, grad, velocity, eps, step_size, momentum, norm, kernel, block):
    return _empty_outputs(x, velocity)


def _empty_outputs(x, velocity):
    """(x_adv, delta, velocity) outputs in x's layout; velocity has no elements when there is none."""
    f32 = torch.float32
    vel_out = empty_in_layout(x, f32) if velocity is not None else x.new_empty(0, dtype=f32)
    return empty_in_layout(x), empty_in_layout(x, f32), vel_out


def pgd_step(x, delta, grad, eps, step_size, velocity=None, momentum=0.0, backend=None, block=0, norm="l2"):
    """One projected PGD step on a batch in `norm` ('l2' or 'linf'); returns (x_adv, delta, velocity).

    x: clean inputs in [0,1], shape (N, ...), NCHW or channels_last. delta: the current
    perturbation (fp32, same shape). grad: gradient of the attacked loss at x + delta (fp32, fp16
    or bf16). eps, step_size: floats or per-sample (N,) tensors. velocity: fp32 momentum buffer
    (pass None with momentum 0 to skip it). backend: 'auto' (Triton on CUDA, torch elsewhere),
    'triton', 'native' (the C++/CUDA kernels of kernels/) or 'torch'. block: overrides the
    Triton tile size or the native CUDA kernel's threads per block (a multiple of 32), forcing
    the multi-tile path (for tests); the native CPU kernel has a single path and ignores it;
    0 picks it. norm: 'l2' (the ball of radius eps, normalized-gradient step) or 'linf' (the box
    |delta_j| <= eps, sign step; see the module docstring). Never synchronizes with the host.

    NaN rule, the same on every backend (the plain-torch `pgd_step_ref` defines it, the kernels
    follow it): a non-finite gradient keeps its sample's delta and velocity, as above; any other
    NaN propagates as torch propagates it. A NaN in x, delta or velocity stays NaN in the
    elements it reaches, clipping included (torch.clamp keeps NaN, where fminf/fmaxf and
    tl.minimum/tl.maximum would turn a NaN pixel into a black one), and a NaN norm fails every
    `> 0` and `> eps` test, so its sample is divided by 1 and not projected. In L-infinity the
    sign keeps NaN (torch.sign gives 0, which would freeze a NaN pixel silently), a NaN eps fails
    both tests of the clip and leaves the sample unprojected, and a NaN step size poisons its
    whole sample (NaN * 0 is NaN), as in L2. Why not clean NaN up: it comes from a bug upstream
    (a corrupt image, a diverged iterate), and kept visible it makes the loss non-finite, which
    the trainer detects and skips, where a black pixel would be trained on silently. The
    gradient is the one exception because fp16 overflow is expected. random_start follows the
    same rule.
    """
    check_norm(norm)
    n = x.shape[0]
    eps_t = per_sample(eps, n, x)
    step_t = per_sample(step_size, n, x)
    kernel = resolve_backend(backend, x)
    if kernel == "torch":
        return pgd_step_ref(x, delta, grad, eps_t, step_t, velocity, momentum, norm)
    if kernel == "triton" and triton is None:
        raise RuntimeError("backend='triton' needs the triton package; install it or use backend='torch'")
    x_out, d_out, v_out = torch.ops.ratio_fast.pgd_step(
        x, delta, grad, velocity, eps_t, step_t, float(momentum), norm, kernel, int(block)
    )
    return x_out, d_out, (v_out if velocity is not None else None)
