"""The native kernels (kernels/, ratio_fast/ops/native.py) beyond the shared op tests.

tests/test_ops.py runs every op check on backend='native' too (the C++ kernels here). This file
covers what is native only: the library build and loading, the fp16/bf16 conversions of the C++
code (exported by a test-only library, built here), x stored in half precision, thread-count
independence, the norm codes of the C ABI, and (marked gpu) the CUDA kernels against the
reference, inside CUDA graphs and on side streams; in both norms where the op has them. A
missing library fails these tests unless RATIO_FAST_NO_NATIVE=1 / RATIO_FAST_NO_CUDA=1
disabled its build.
"""
import ctypes
import shutil
import subprocess

import pytest
import torch

from ratio_fast.errors import UserError
from ratio_fast.ops import native, pgd_step, pgd_step_ref, random_start, random_start_ref
from ratio_fast.ops import NORMS
from conftest import no_host_sync
from test_kernels_build import ROOT, cmake
from test_ops import assert_close_to_oracle, make_inputs, pgd_oracle, require_backend


@pytest.fixture(params=NORMS)
def norm(request):
    """Each threat model in turn."""
    return request.param


@pytest.fixture
def cpu_library():
    require_backend("native", "cpu")
    return native.load_library("cpu")


@pytest.fixture(scope="session")
def conversions_library(tmp_path_factory):
    """The test-only library ratio_fast_cpu_tests (CMakeLists.txt): the CPU kernels' storage
    conversions, exported. pip install builds only the shipped libraries, so it is built here."""
    require_backend("native", "cpu")
    build = tmp_path_factory.mktemp("cpu_tests")
    cmake("-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DRATIO_FAST_CUDA=OFF",
          f"-DRATIO_FAST_LIB_DIR={build / 'lib'}")
    cmake("--build", str(build), "--target", "ratio_fast_cpu_tests")
    lib = ctypes.CDLL(str(build / f"libratio_fast_cpu_tests{native.library_path('cpu').suffix}"))
    p, i = ctypes.c_void_p, ctypes.c_int  # ratio_fast_cpu_convert in kernels/cpu/test_exports.cpp
    lib.ratio_fast_cpu_convert.argtypes, lib.ratio_fast_cpu_convert.restype = [p, i, p, i, ctypes.c_int64], i
    return lib


@pytest.fixture
def fresh_library_cache():
    """load_library caches per process; tests that point it elsewhere must not leak that."""
    native.load_library.cache_clear()
    yield
    native.load_library.cache_clear()


def convert(lib, src, dst_dtype):
    dst = torch.empty(src.shape, dtype=dst_dtype)
    status = lib.ratio_fast_cpu_convert(src.data_ptr(), native.DTYPE_CODES[src.dtype], dst.data_ptr(),
                                        native.DTYPE_CODES[dst_dtype], src.numel())
    assert status == 0
    return dst


def same_bits_or_both_nan(a, b):
    as_int = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    return bool(((a.view(as_int) == b.view(as_int)) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_to_float_is_exact_for_every_bit_pattern(conversions_library, half):
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(half)
    assert same_bits_or_both_nan(convert(conversions_library, every, torch.float32), every.float())


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_float_to_half_rounds_like_torch(conversions_library, half):
    g = torch.Generator().manual_seed(0)
    # Random bit patterns cover every exponent (subnormals, inf, NaN included); the listed values
    # sit on rounding ties, at the fp16 overflow threshold and around the subnormal boundary.
    patterns = torch.randint(-(2**31), 2**31 - 1, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    edges = torch.tensor([0.0, -0.0, 1.0, 1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65519.99, 65520.0, 2**-14,
                          2**-14 - 2**-25, 2**-24, 2**-25, 2**-25 + 2**-40, 3 * 2**-26, 1e-8, 0.3, 0.7,
                          float("inf"), -float("inf"), float("nan"), 3.4e38])
    values = torch.cat([patterns.view(torch.float32), edges, -edges, torch.rand(10_000, generator=g)])
    assert same_bits_or_both_nan(convert(conversions_library, values, half), values.to(half))


def test_the_shipped_library_leaves_the_test_exports_out(cpu_library):
    assert not hasattr(cpu_library, "ratio_fast_cpu_convert")


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16])
def test_native_pgd_step_with_half_precision_inputs(cpu_library, norm, x_dtype):
    x, delta, grad, velocity, eps, step = make_inputs((6, 3, 9, 7), torch.bfloat16, "channels_last", seed=11, norm=norm)
    x = x.to(x_dtype)
    out = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend="native", norm=norm)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, 0.9, norm)
    assert out[0].dtype == x_dtype
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, 0.9, norm))
    noise, radius = torch.randn(x.shape), torch.rand(6)
    out = random_start(x, noise, radius, eps, backend="native", norm=norm)
    same = random_start_ref(x, noise, radius, eps, norm)
    assert_close_to_oracle(out, same, random_start_ref(x.double(), noise.double(), radius, eps, norm))


def test_native_results_do_not_depend_on_the_thread_count(cpu_library, norm):
    # Large enough that the kernel splits the batch (it stays on one thread for small batches).
    x, delta, grad, velocity, eps, step = make_inputs((48, 3, 32, 32), torch.float16, "contiguous", seed=12, norm=norm)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend="native", norm=norm)
        torch.set_num_threads(2)
        two = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend="native", norm=norm)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, 0.9, norm)
    assert_close_to_oracle(two, same, pgd_oracle(x, delta, grad, velocity, eps, step, 0.9, norm))


def test_norm_codes_cover_every_norm_and_the_library_refuses_others(cpu_library):
    assert tuple(native.NORM_CODES) == NORMS
    x, delta, grad, velocity, eps, step = make_inputs((2, 3, 4, 4), torch.float32, "contiguous")
    outputs = [torch.empty_like(x) for _ in range(3)]
    step_args = native.PgdStepArgs(
        x=x.data_ptr(), delta=delta.data_ptr(), grad=grad.data_ptr(), velocity=velocity.data_ptr(),
        eps=eps.data_ptr(), step=step.data_ptr(), x_out=outputs[0].data_ptr(), delta_out=outputs[1].data_ptr(),
        velocity_out=outputs[2].data_ptr(), n=2, d=48, momentum=0.9, x_dtype=0, grad_dtype=0, norm=2)
    start_args = native.RandomStartArgs(x=x.data_ptr(), noise=delta.data_ptr(), scale=eps.data_ptr(),
                                        x_out=outputs[0].data_ptr(), delta_out=outputs[1].data_ptr(), n=2, d=48,
                                        x_dtype=0, norm=2)
    invalid_argument = -2  # RF_ERROR_ARGUMENT
    assert cpu_library.ratio_fast_cpu_pgd_step(ctypes.byref(step_args), 1) == invalid_argument
    assert cpu_library.ratio_fast_cpu_random_start(ctypes.byref(start_args), 1) == invalid_argument
    step_args.norm = start_args.norm = native.NORM_CODES["linf"]
    assert cpu_library.ratio_fast_cpu_pgd_step(ctypes.byref(step_args), 1) == 0
    assert cpu_library.ratio_fast_cpu_random_start(ctypes.byref(start_args), 1) == 0


def test_native_rejects_unsupported_dtypes(cpu_library):
    x, delta, grad, velocity, eps, step = make_inputs((2, 3, 4, 4), torch.float32, "contiguous")
    with pytest.raises(TypeError, match="float64"):
        pgd_step(x.double(), delta, grad, eps, step, velocity, 0.9, backend="native")


def test_missing_library_is_a_user_error_that_says_how_to_build(tmp_path, monkeypatch, fresh_library_cache):
    monkeypatch.setattr(native, "LIBRARY_DIR", tmp_path)
    x, delta, grad, velocity, eps, step = make_inputs((2, 3, 4, 4), torch.float32, "contiguous")
    with pytest.raises(UserError, match=r"libratio_fast_cpu\.so.*not built.*pip install -e \."):
        pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend="native")


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to build a stand-in library")
def test_stale_library_is_refused(tmp_path, monkeypatch, fresh_library_cache):
    source = tmp_path / "stale.c"
    source.write_text("int ratio_fast_abi_version(void) { return 0; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(native.library_path("cpu").name), str(source)],
                   cwd=tmp_path, check=True)
    monkeypatch.setattr(native, "LIBRARY_DIR", tmp_path)
    with pytest.raises(UserError, match="stale"):
        native.load_library("cpu")


def test_cuda_library_is_built_where_nvcc_is_and_loads_without_a_gpu():
    if shutil.which("nvcc") is None and not native.library_path("cuda").exists():
        pytest.skip("no nvcc: the CUDA library is not expected")
    require_backend("native", "cuda")
    # Its CUDA runtime is linked in statically and starts lazily: loading needs no driver or GPU.
    lib = native.load_library("cuda")
    assert lib.ratio_fast_abi_version() == native.ABI_VERSION
    assert isinstance(lib.ratio_fast_cuda_pgd_step, ctypes._CFuncPtr)


# --- CUDA backend (a lent GPU) ---


@pytest.fixture
def cuda_native():
    require_backend("native", "cuda")


def on_cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]  # .cuda() keeps the memory format


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(129, 3, 32, 32), (5, 1, 7, 9), (3, 3, 64, 64), (2, 3, 96, 96)])
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_cuda_pgd_step_matches_reference(cuda_native, norm, shape, grad_dtype, layout, momentum):
    # 3x32x32 stays in registers, 3x64x64 and 3x96x96 take the looping path.
    x, delta, grad, velocity, eps, step = on_cuda(*make_inputs(shape, grad_dtype, layout, momentum=momentum > 0,
                                                               norm=norm))
    out = pgd_step(x, delta, grad, eps, step, velocity, momentum, backend="native", norm=norm)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, momentum, norm)
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, momentum, norm))
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out[0].is_contiguous(memory_format=memory_format)


@pytest.mark.gpu
@pytest.mark.parametrize("block", [32, 128, 1024])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_cuda_looping_path_matches_reference(cuda_native, norm, block, momentum):
    x, delta, grad, velocity, eps, step = on_cuda(*make_inputs((7, 3, 32, 32), torch.float16, "contiguous",
                                                               seed=1, momentum=momentum > 0, norm=norm))
    out = pgd_step(x, delta, grad, eps, step, velocity, momentum, backend="native", block=block, norm=norm)
    same = pgd_step_ref(x, delta, grad, eps, step, velocity, momentum, norm)
    assert_close_to_oracle(out, same, pgd_oracle(x, delta, grad, velocity, eps, step, momentum, norm))


@pytest.mark.gpu
@pytest.mark.parametrize("block", [0, 64])
def test_cuda_degenerate_inputs_never_nan(cuda_native, norm, block):
    x, delta, grad, velocity, eps, step = make_inputs((5, 3, 8, 8), torch.float16, "contiguous", seed=4, norm=norm)
    grad[1] = 0
    grad[2, 0, 0, 0] = float("inf")
    grad[3, 1, 2, 3] = float("nan")
    velocity[1] = 0
    x, delta, grad, velocity, eps, step = on_cuda(x, delta, grad, velocity, eps, step)
    x_adv, d, v = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend="native", block=block, norm=norm)
    assert all(torch.isfinite(t).all() for t in (x_adv, d, v))
    assert d[0].abs().max() == 0 and torch.equal(x_adv[0], x[0])  # eps 0
    assert v[1].abs().max() == 0  # no direction at all
    for i in (2, 3):  # non-finite gradient: iterate and velocity kept
        assert torch.allclose(d[i], (x[i] + delta[i]).clamp(0, 1) - x[i], atol=1e-7)
        assert torch.equal(v[i], velocity[i])


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(65, 3, 32, 32), (2, 3, 96, 96)])
@pytest.mark.parametrize("block", [0, 64])
def test_cuda_random_start_matches_reference(cuda_native, norm, shape, block):
    g = torch.Generator().manual_seed(9)
    x, noise = torch.rand(shape, generator=g), torch.randn(shape, generator=g)
    noise[1] = 0  # zero noise: no perturbation, not NaN
    radius, eps = torch.rand(shape[0], generator=g), torch.rand(shape[0], generator=g) * 2
    x, noise, radius, eps = on_cuda(x, noise, radius, eps)
    out = random_start(x, noise, radius, eps, backend="native", block=block, norm=norm)
    same = random_start_ref(x, noise, radius, eps, norm)
    assert_close_to_oracle(out, same, random_start_ref(x.double(), noise.double(), radius, eps, norm))
    assert out[1][1].abs().max() == 0


@pytest.mark.gpu
def test_cuda_step_is_captured_by_cuda_graphs_without_host_syncs(cuda_native, norm):
    x, delta, grad, velocity, eps, step = on_cuda(*make_inputs((64, 3, 32, 32), torch.bfloat16, "channels_last",
                                                               norm=norm))
    static = [t.clone() for t in (x, delta, grad, velocity)]

    def attack_step():
        return pgd_step(*static[:3], eps, step, static[3], 0.9, backend="native", norm=norm)

    side = torch.cuda.Stream()  # warm-up on a side stream, as capture requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        attack_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with no_host_sync(), torch.cuda.graph(graph):
        captured = attack_step()
    # New inputs in the static tensors: a replay must compute with them.
    x2, delta2, grad2, velocity2, _, _ = on_cuda(*make_inputs((64, 3, 32, 32), torch.bfloat16, "channels_last", seed=5))
    for s, t in zip(static, (x2, delta2, grad2, velocity2)):
        s.copy_(t)
    graph.replay()
    expected = pgd_step(x2, delta2, grad2, eps, step, velocity2, 0.9, backend="native", norm=norm)
    assert all(torch.equal(c, e) for c, e in zip(captured, expected))


@pytest.mark.gpu
def test_cuda_step_runs_on_the_callers_stream(cuda_native):
    x, delta, grad, velocity, eps, step = on_cuda(*make_inputs((256, 3, 32, 32), torch.float32, "contiguous"))
    expected = pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend="native")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # Inputs written on the side stream just before the step: correct only if the step
        # runs after them on that same stream.
        torch.cuda._sleep(1_000_000)
        grad_side = grad * 1.0
        out = pgd_step(x, delta, grad_side, eps, step, velocity, 0.9, backend="native")
    torch.cuda.current_stream().wait_stream(side)
    assert all(torch.equal(o, e) for o, e in zip(out, expected))


@pytest.mark.gpu
def test_cuda_step_traced_by_torch_compile(cuda_native, norm):
    x, delta, grad, velocity, eps, step = on_cuda(*make_inputs((8, 3, 32, 32), torch.float16, "channels_last",
                                                               norm=norm))

    def attack_step(x, delta, grad, velocity):
        return pgd_step(x, delta, grad, eps, step, velocity, 0.9, backend="native", norm=norm)

    compiled = torch.compile(attack_step, fullgraph=True)
    for c, e in zip(compiled(x, delta, grad, velocity), attack_step(x, delta, grad, velocity)):
        assert torch.equal(c, e)


def test_environment_switches_are_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(native.NO_NATIVE_ENV, raising=False)
    monkeypatch.setenv(native.NO_CUDA_ENV, "1")
    assert not native.build_disabled("cpu") and native.build_disabled("cuda")
    monkeypatch.setenv(native.NO_NATIVE_ENV, "1")
    assert native.build_disabled("cpu")
