"""The native kernels of kernels/ (C++ with OpenMP, and CUDA), called through their C ABI.

CMake (run by setup.py, see kernels/README.md) builds them into this directory:
`libratio_fast_cpu.so` always, `libratio_fast_cuda.so` where nvcc is found. A library is loaded
with ctypes the first time an op runs on its device, never at import. The launchers here write
into outputs the custom ops (`ratio_fast::pgd_step`, `ratio_fast::random_start`) allocated, on
the caller's current CUDA stream; they never synchronize with the host.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import torch

from ..choices import NORMS, check_builders
from ..errors import UserError

ABI_VERSION = 3  # RATIO_FAST_ABI_VERSION in kernels/include/ratio_fast_kernels.h
LIBRARY_DIR = Path(__file__).resolve().parent
NO_NATIVE_ENV = "RATIO_FAST_NO_NATIVE"  # set to 1: setup.py builds no native library at all
NO_CUDA_ENV = "RATIO_FAST_NO_CUDA"  # set to 1: setup.py builds the CPU library only

# rf_dtype codes: the storage types the kernels read for x and the gradient.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# rf_norm codes: the threat model of an op (choices.NORMS).
NORM_CODES = {"l2": 0, "linf": 1}
check_builders(NORM_CODES, NORMS, __name__)
_ERRORS = {-1: "unsupported dtype", -2: "invalid argument"}  # rf_error codes

_p, _i, _i64, _f = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float


class PgdStepArgs(ctypes.Structure):
    """struct PgdStepArgs of kernels/include/ratio_fast_kernels.h, field for field."""

    _fields_ = [("x", _p), ("delta", _p), ("grad", _p), ("velocity", _p), ("eps", _p), ("step", _p),
                ("x_out", _p), ("delta_out", _p), ("velocity_out", _p),
                ("n", _i64), ("d", _i64), ("momentum", _f), ("x_dtype", _i), ("grad_dtype", _i), ("norm", _i)]


class RandomStartArgs(ctypes.Structure):
    """struct RandomStartArgs of kernels/include/ratio_fast_kernels.h, field for field."""

    _fields_ = [("x", _p), ("noise", _p), ("scale", _p), ("x_out", _p), ("delta_out", _p),
                ("n", _i64), ("d", _i64), ("x_dtype", _i), ("norm", _i)]


# ratio_fast_<kind>_<op>(const <op's struct>*, <launch place>): the CPU takes its thread count,
# CUDA the block size, the device and the stream.
_OPS = {"pgd_step": PgdStepArgs, "random_start": RandomStartArgs}
_LAUNCH_PLACE = {"cpu": [_i], "cuda": [_i, _i, _p]}


def library_path(kind: str) -> Path:
    """Where the build puts the library of `kind` ('cpu' or 'cuda')."""
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    return LIBRARY_DIR / f"libratio_fast_{kind}{suffix}"


def build_disabled(kind: str = "cpu") -> bool:
    """True when the environment tells setup.py not to build the library of `kind`."""
    skip = os.environ.get(NO_NATIVE_ENV, "") == "1"
    return skip or (kind == "cuda" and os.environ.get(NO_CUDA_ENV, "") == "1")


@functools.cache  # a failed load raises and is retried next time; a successful one is kept
def load_library(kind: str) -> ctypes.CDLL:
    """The library of `kind` ('cpu' or 'cuda'), loaded and checked; UserError if it was not built."""
    path = library_path(kind)
    if not path.exists():
        needs = "cmake and a C++ compiler" + (", and nvcc for the CUDA library" if kind == "cuda" else "")
        raise UserError(
            f"backend 'native' on {kind} needs {path}, which was not built: run `pip install -e .` "
            f"without {NO_NATIVE_ENV}=1 (it needs {needs}; see kernels/README.md), or pick another backend"
        )
    lib = ctypes.CDLL(str(path))
    lib.ratio_fast_abi_version.restype = ctypes.c_int
    version = lib.ratio_fast_abi_version()
    if version != ABI_VERSION:
        raise UserError(f"{path} is stale (ABI {version}, these sources expect {ABI_VERSION}): rebuild it with `pip install -e .`")
    for op, args_type in _OPS.items():
        fn = getattr(lib, f"ratio_fast_{kind}_{op}")
        fn.argtypes, fn.restype = [ctypes.POINTER(args_type), *_LAUNCH_PLACE[kind]], ctypes.c_int
    if kind == "cuda":
        lib.ratio_fast_cuda_error_string.argtypes, lib.ratio_fast_cuda_error_string.restype = [_i], ctypes.c_char_p
    return lib


def pgd_step_into(x, delta, grad, velocity, eps, step_size, momentum, norm, block, x_out, delta_out, velocity_out):
    """The native PGD step in `norm` ('l2' or 'linf') of x's device, written into the outputs.

    All tensors are dense in one memory format (each sample one run of D elements); x and grad
    are fp32, fp16 or bf16, the rest is read as fp32. velocity None: no momentum buffer.
    """
    n = x.shape[0]
    delta, velocity = _fp32(delta), _fp32(velocity)
    args = PgdStepArgs(
        x=_ptr(x), x_dtype=_dtype_code(x, "x"), delta=_ptr(delta),
        grad=_ptr(grad), grad_dtype=_dtype_code(grad, "grad"), velocity=_ptr(velocity),
        eps=_ptr(eps), step=_ptr(step_size),
        x_out=_ptr(x_out), delta_out=_ptr(delta_out), velocity_out=_ptr(velocity_out if velocity is not None else None),
        n=n, d=x.numel() // max(n, 1), momentum=momentum, norm=NORM_CODES[norm],
    )
    _check_devices(x, delta, grad, velocity, eps, step_size)
    _launch("pgd_step", args, x, block)


def random_start_into(x, noise, scale, norm, block, x_out, delta_out):
    """The native random start in `norm` of x's device, written into x_out and delta_out (layouts as above)."""
    n = x.shape[0]
    noise = _fp32(noise)
    args = RandomStartArgs(x=_ptr(x), x_dtype=_dtype_code(x, "x"), noise=_ptr(noise), scale=_ptr(scale),
                           x_out=_ptr(x_out), delta_out=_ptr(delta_out), n=n, d=x.numel() // max(n, 1),
                           norm=NORM_CODES[norm])
    _check_devices(x, noise, scale)
    _launch("random_start", args, x, block)


def _launch(op: str, args: ctypes.Structure, x: torch.Tensor, block: int) -> None:
    """ratio_fast_{cuda,cpu}_<op>(&args, ...) on x's device: CUDA gets the block size and the
    launch place (device, current stream), the CPU kernel torch's thread count."""
    if x.is_cuda:
        lib = load_library("cuda")
        status = getattr(lib, f"ratio_fast_cuda_{op}")(ctypes.byref(args), block, *_cuda_launch_place(x))
    else:
        lib = load_library("cpu")
        status = getattr(lib, f"ratio_fast_cpu_{op}")(ctypes.byref(args), torch.get_num_threads())
    _check(status, lib, op)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    """t as fp32 (itself when it already is; a conversion keeps the memory format)."""
    return None if t is None else t.to(torch.float32)


def _dtype_code(t: torch.Tensor, name: str) -> int:
    if t.dtype not in DTYPE_CODES:
        raise TypeError(f"the native kernels take float32, float16 or bfloat16 {name}, got {t.dtype}")
    return DTYPE_CODES[t.dtype]


def _check_devices(x, *others):
    for t in others:
        if t is not None and t.device != x.device:
            raise ValueError(f"all inputs must be on {x.device}, got one on {t.device}")


def _cuda_launch_place(x):
    """(device index, current stream handle): launches follow torch's stream, so graphs capture them."""
    return x.device.index, torch.cuda.current_stream(x.device).cuda_stream


def _check(status, lib, op):
    if status == 0:
        return
    if status in _ERRORS:
        raise RuntimeError(f"native {op}: {_ERRORS[status]}")
    raise RuntimeError(f"native {op}: CUDA error {status}: {lib.ratio_fast_cuda_error_string(status).decode()}")
