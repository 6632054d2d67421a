"""Helpers shared by the fused ops: argument normalization, backend and norm choice, and the
Triton helpers both kernels use (the NaN rule of `pgd_step.pgd_step`, loads, the box constraint).
The parts other packages use are exported by ops/__init__.py."""
from __future__ import annotations

import os

import torch

from .. import choices
from ..errors import UserError
from . import native

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path works without Triton
    triton = None

BACKENDS = tuple(choices.BACKENDS)  # --backend
NORMS = tuple(choices.NORMS)  # the threat models: the L2 ball and the L-infinity box around x


def resolve_backend(backend: str | None, x: torch.Tensor) -> str:
    """'auto' (or None) picks Triton for CUDA tensors and the plain-torch reference elsewhere.

    'native' (kernels/, C++ or CUDA by x's device) is only ever chosen explicitly.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend is None or choices.BACKENDS[backend].picks:
        return "triton" if x.is_cuda else "torch"
    return backend


def require_backend(backend: str, device: torch.device) -> None:
    """A UserError now, in one line, where --backend `backend` cannot run on `device`, instead of
    one at the first attack: Triton on a CPU without its interpreter, a native library not built."""
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("--backend triton needs a CUDA device (or TRITON_INTERPRET=1 to run the kernels "
                        "in Triton's interpreter on the CPU)")
    if backend == "native":
        native.load_library("cuda" if device.type == "cuda" else "cpu")


def check_norm(norm: str) -> str:
    """norm itself if it is one of NORMS; ValueError otherwise."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def per_sample(value: float | torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """A float or a tensor broadcastable to (n,) as a contiguous fp32 (n,) tensor on like's device.

    A float becomes a fill kernel, not a host-to-device copy, so this never synchronizes.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=torch.float32).reshape(-1).expand(n).contiguous()
    return torch.full((n,), float(value), device=like.device, dtype=torch.float32)


def sample_layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format the fused ops keep: channels_last if x has it, else contiguous.

    Either way each sample is one dense run of C*H*W elements, which is all the kernels need.
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def empty_in_layout(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialized tensor shaped like x, in the layout the kernels keep (`sample_layout`)."""
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device, memory_format=sample_layout(x))


def safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b with 0 where b == 0 (b is a norm, so a is all zeros there too)."""
    return a / torch.where(b > 0, b, torch.ones_like(b))


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32, the accumulation type of the kernels; fp64 when an input is fp64 (the tests' oracle)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


if triton is not None:

    @triton.jit
    def clamp01(v):
        """v clipped to [0, 1], NaN kept as torch.clamp keeps it (tl.minimum/tl.maximum drop NaN)."""
        return tl.where(v < 0.0, 0.0, tl.where(v > 1.0, 1.0, v))

    @triton.jit
    def clip_to_box(d, eps):
        """d clipped to [-eps, eps] (the L-infinity projection), NaN kept as clamp01 keeps it; a NaN
        eps fails both tests and leaves d unprojected, as a NaN norm leaves the L2 step."""
        return tl.where(d > eps, eps, tl.where(d < -eps, -eps, d))

    @triton.jit
    def sign_keeping_nan(v):
        """+1 or -1 by v's sign, and v itself where it is +-0 (a tie: no move) or NaN (kept: torch.sign
        gives 0 for NaN, which would freeze a NaN pixel silently)."""
        return tl.where(v > 0.0, 1.0, tl.where(v < 0.0, -1.0, v))

    @triton.jit
    def max_keeping_nan(a, b):
        """max(a, b), NaN if either is (tl.maximum and tl.max drop NaN, as fmaxf does)."""
        return tl.where((a > b) | (a != a), a, b)

    @triton.jit
    def norm_or_one(norm):
        """The divisor of `safe_div`: the norm, or 1 where it is not positive (a NaN norm divides by 1)."""
        return tl.where(norm > 0, norm, 1.0)

    @triton.jit
    def load_f32(ptr, idx, mask):
        """Elements idx of ptr as fp32 (0 where masked off: past the end of the sample)."""
        return tl.load(ptr + idx, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def store_in_box(x_out_ptr, delta_out_ptr, idx, mask, x, delta):
        """The box constraint: x' = clamp(x + delta, 0, 1) stored in x_out's dtype, and the delta
        that really moves x there, x' - x, in fp32."""
        x_adv = clamp01(x + delta)
        tl.store(x_out_ptr + idx, x_adv.to(x_out_ptr.dtype.element_ty), mask=mask)
        tl.store(delta_out_ptr + idx, x_adv - x, mask=mask)
