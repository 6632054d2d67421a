"""The random start of an L2 attack, fused: scale noise into the ball, clip to the box.

Per sample i:  d = noise_i * (eps_i * radius_i / ||noise_i||_2);  x' = clamp(x + d, 0, 1);
d = x' - x. With Gaussian noise, radius 1 puts d uniformly on the sphere and
radius = u^(1/D), u ~ U(0,1), uniformly inside the ball (D = elements per sample); the caller
draws noise and radius with torch's generator so both backends see the same random numbers.

Contents: `random_start_ref`, the Triton kernel, the custom op `ratio_fast::random_start` that
runs it or the native kernel (kernels/, through `native.py`), the dispatch `random_start`, and
`sample_ball`, which draws the noise and radius and calls it.
"""
from __future__ import annotations

import torch

from . import native
from ._common import compute_dtype, empty_in_layout, per_sample, resolve_backend, safe_div, sample_layout
from .interpreter import require_working_interpreter
from .tiles import random_start_tile

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
else:
    from ._common import load_f32, norm_or_one, store_in_box


def random_start_ref(x, noise, radius, eps):
    """Plain-torch random start. Returns (x_adv, delta)."""
    n = x.shape[0]
    acc = compute_dtype(x, noise)
    x32 = x.to(acc).reshape(n, -1)
    z = noise.to(acc).reshape(n, -1)
    scale = (per_sample(eps, n, x) * per_sample(radius, n, x)).to(acc)
    d = safe_div(z, z.norm(dim=1, keepdim=True)) * scale[:, None]
    x_adv = (x32 + d).clamp(0.0, 1.0)
    layout = sample_layout(x)
    return (
        x_adv.reshape(x.shape).to(x.dtype).contiguous(memory_format=layout),
        (x_adv - x32).reshape(x.shape).contiguous(memory_format=layout),
    )


if triton is not None:

    @triton.jit
    def _random_start_kernel(x_ptr, noise_ptr, scale_ptr, x_out_ptr, delta_out_ptr, D, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * D
        sq_acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            z = load_f32(noise_ptr + base, offs, offs < D)
            sq_acc += z * z
        norm = tl.sqrt(tl.sum(sq_acc, axis=0))
        factor = tl.load(scale_ptr + pid) / norm_or_one(norm)
        for start in range(0, D, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < D
            z = load_f32(noise_ptr + base, offs, mask)
            x = load_f32(x_ptr + base, offs, mask)
            store_in_box(x_out_ptr + base, delta_out_ptr + base, offs, mask, x, z * factor)

    def _launch_triton(x, noise, scale, block, x_out, delta_out):
        if not x.is_cuda:  # CPU tensors run in Triton's interpreter (or are compiled ahead of time)
            require_working_interpreter(_random_start_kernel)
        n, d_elems = x.shape[0], x.numel() // x.shape[0]
        block, num_warps = random_start_tile(d_elems, block)
        _random_start_kernel[(n,)](x, noise, scale, x_out, delta_out, d_elems, BLOCK=block, num_warps=num_warps)


@torch.library.custom_op("ratio_fast::random_start", mutates_args=())  # opaque, as pgd_step
def _random_start_op(
    x: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor, kernel: str, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random start by `kernel` ('triton' or 'native'); inputs are made dense in x's layout first."""
    layout = sample_layout(x)
    x = x.contiguous(memory_format=layout)
    noise = noise.contiguous(memory_format=layout)
    x_out, delta_out = empty_in_layout(x), empty_in_layout(x, torch.float32)
    if x.numel() == 0:
        return x_out, delta_out
    launch = native.random_start_into if kernel == "native" else _launch_triton
    launch(x, noise, scale, block, x_out, delta_out)
    return x_out, delta_out


@_random_start_op.register_fake
def _(x, noise, scale, kernel, block):
    return empty_in_layout(x), empty_in_layout(x, torch.float32)


def random_start(x, noise, radius, eps, backend=None, block=0):
    """Place x + delta at `radius` (fraction of eps) along `noise`, clipped to [0,1].

    Returns (x_adv, delta). eps and radius: floats or per-sample (N,) tensors. backend, block
    and NaN: as for `pgd_step` (a NaN in x or noise stays NaN, as in torch).
    """
    n = x.shape[0]
    kernel = resolve_backend(backend, x)
    if kernel == "torch":
        return random_start_ref(x, noise, radius, eps)
    if kernel == "triton" and triton is None:
        raise RuntimeError("backend='triton' needs the triton package; install it or use backend='torch'")
    scale = per_sample(eps, n, x) * per_sample(radius, n, x)
    return tuple(torch.ops.ratio_fast.random_start(x, noise, scale, kernel, int(block)))


def sample_ball(x, eps, on_sphere=False, generator=None, backend=None):
    """A random point of the L2 ball of radius eps around each x (uniform in volume, or on the sphere), clipped to [0,1]."""
    noise = torch.randn(x.shape, device=x.device, dtype=torch.float32, generator=generator)
    if on_sphere:
        radius = 1.0
    else:
        dims = x[0].numel() if x.shape[0] else 1
        radius = torch.rand(x.shape[0], device=x.device, generator=generator) ** (1.0 / dims)
    return random_start(x, noise, radius, eps, backend=backend)
