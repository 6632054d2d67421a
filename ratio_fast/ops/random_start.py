"""The random start of an attack, fused: scale noise into the eps-ball, clip to the box.

Per sample i:  d = noise_i * (eps_i * radius_i / ||noise_i||);  x' = clamp(x + d, 0, 1);
d = x' - x, with ||.|| the attack's norm: L2, or L-infinity (max |noise_ij|). radius 1 puts d
on the sphere of radius eps, in the direction of the noise. Inside the ball: for any norm, a
point uniform in the unit ball is its direction u / ||u|| (u uniform in that ball) times an
independent radius r with P(r <= t) = t^D, i.e. r = U^(1/D), U ~ U(0,1) (D = elements per
sample). So Gaussian noise with radius U^(1/D) is uniform in the L2 ball, and noise uniform in
[-1,1]^D with radius U^(1/D) is uniform in the L-infinity box (each element uniform in
[-eps, eps], as Madry et al.'s start draws it); with radius 1 it is AutoAttack's L-infinity
start, eps * u / ||u||_inf (AutoAttack adds 1e-12 to the divisor). The caller draws noise and
radius with torch's generator so every backend sees the same random numbers.

Contents: `random_start_ref`, the Triton kernel, the custom op `ratio_fast::random_start` that
runs it or the native kernel (kernels/, through `native.py`), the dispatch `random_start`, and
`sample_ball`, which draws the noise and radius and calls it.
"""
from __future__ import annotations

import torch

from . import native
from ._common import check_norm, compute_dtype, empty_in_layout, per_sample, resolve_backend, safe_div, sample_layout
from .interpreter import require_working_interpreter
from .tiles import random_start_tile

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
else:
    from ._common import load_f32, max_keeping_nan, norm_or_one, store_in_box


def random_start_ref(x, noise, radius, eps, norm="l2"):
    """Plain-torch random start in `norm`. Returns (x_adv, delta)."""
    check_norm(norm)
    n = x.shape[0]
    acc = compute_dtype(x, noise)
    x32 = x.to(acc).reshape(n, -1)
    z = noise.to(acc).reshape(n, -1)
    scale = (per_sample(eps, n, x) * per_sample(radius, n, x)).to(acc)
    z_norm = z.abs().amax(dim=1, keepdim=True) if norm == "linf" else z.norm(dim=1, keepdim=True)
    d = safe_div(z, z_norm) * scale[:, None]
    x_adv = (x32 + d).clamp(0.0, 1.0)
    layout = sample_layout(x)
    return (
        x_adv.reshape(x.shape).to(x.dtype).contiguous(memory_format=layout),
        (x_adv - x32).reshape(x.shape).contiguous(memory_format=layout),
    )


if triton is not None:

    @triton.jit
    def _random_start_kernel(x_ptr, noise_ptr, scale_ptr, x_out_ptr, delta_out_ptr, D,
                             LINF: tl.constexpr, BLOCK: tl.constexpr):
        """||noise|| (L2, or L-infinity with LINF) in a first sweep, then x + noise * scale / ||noise||."""
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * D
        acc = tl.zeros([BLOCK], dtype=tl.float32)  # sum of squares, or max |z| (masked-off zeros change neither)
        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            z = load_f32(noise_ptr + base, offs, offs < D)
            if LINF:
                acc = max_keeping_nan(acc, tl.abs(z))
            else:
                acc += z * z
        if LINF:
            norm = tl.reduce(acc, 0, max_keeping_nan)
        else:
            norm = tl.sqrt(tl.sum(acc, axis=0))
        factor = tl.load(scale_ptr + pid) / norm_or_one(norm)
        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < D
            z = load_f32(noise_ptr + base, offs, mask)
            x = load_f32(x_ptr + base, offs, mask)
            store_in_box(x_out_ptr + base, delta_out_ptr + base, offs, mask, x, z * factor)

    def _launch_triton(x, noise, scale, norm, block, x_out, delta_out):
        if not x.is_cuda:  # CPU tensors run in Triton's interpreter (or are compiled ahead of time)
            require_working_interpreter(_random_start_kernel)
        n, d_elems = x.shape[0], x.numel() // x.shape[0]
        block, num_warps = random_start_tile(d_elems, block)
        _random_start_kernel[(n,)](x, noise, scale, x_out, delta_out, d_elems,
                                   LINF=norm == "linf", BLOCK=block, num_warps=num_warps)


@torch.library.custom_op("ratio_fast::random_start", mutates_args=())  # opaque, as pgd_step
def _random_start_op(
    x: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor, norm: str, kernel: str, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random start in `norm` by `kernel` ('triton' or 'native'); inputs are made dense in x's layout first."""
    layout = sample_layout(x)
    x = x.contiguous(memory_format=layout)
    noise = noise.contiguous(memory_format=layout)
    x_out, delta_out = empty_in_layout(x), empty_in_layout(x, torch.float32)
    if x.numel() == 0:
        return x_out, delta_out
    launch = native.random_start_into if kernel == "native" else _launch_triton
    launch(x, noise, scale, norm, block, x_out, delta_out)
    return x_out, delta_out


@_random_start_op.register_fake
def _(x, noise, scale, norm, kernel, block):
    return empty_in_layout(x), empty_in_layout(x, torch.float32)


def random_start(x, noise, radius, eps, backend=None, block=0, norm="l2"):
    """Place x + delta at `radius` (fraction of eps, in `norm`: 'l2' or 'linf') along `noise`,
    clipped to [0,1].

    Returns (x_adv, delta). eps and radius: floats or per-sample (N,) tensors. backend, block
    and NaN: as for `pgd_step` (a NaN in x or noise stays NaN, as in torch; a NaN noise element
    makes its sample's norm NaN, and a NaN norm divides by 1).
    """
    check_norm(norm)
    n = x.shape[0]
    kernel = resolve_backend(backend, x)
    if kernel == "torch":
        return random_start_ref(x, noise, radius, eps, norm)
    if kernel == "triton" and triton is None:
        raise RuntimeError("backend='triton' needs the triton package; install it or use backend='torch'")
    scale = per_sample(eps, n, x) * per_sample(radius, n, x)
    return tuple(torch.ops.ratio_fast.random_start(x, noise, scale, norm, kernel, int(block)))


def sample_ball(x, eps, on_sphere=False, generator=None, backend=None, norm="l2"):
    """A random point of the ball of radius eps in `norm` ('l2' or 'linf': the box) around each x,
    uniform in volume or on its sphere, clipped to [0,1] (the module docstring says why it is uniform)."""
    check_norm(norm)
    if norm == "linf":
        noise = torch.rand(x.shape, device=x.device, dtype=torch.float32, generator=generator) * 2 - 1
    else:
        noise = torch.randn(x.shape, device=x.device, dtype=torch.float32, generator=generator)
    if on_sphere:
        radius = 1.0
    else:
        dims = x[0].numel() if x.shape[0] else 1
        radius = torch.rand(x.shape[0], device=x.device, generator=generator) ** (1.0 / dims)
    return random_start(x, noise, radius, eps, backend=backend, norm=norm)
