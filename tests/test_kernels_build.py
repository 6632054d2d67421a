"""The CMake build of kernels/ as CI checks it, into a temporary directory.

With -DRATIO_FAST_WERROR=ON every warning is an error, register spills of the CUDA kernels
included (`-Xptxas=-warn-spills` under `-Werror=all-warnings`), the test-only library too; the
CUDA part is built for sm_90 only, to stay fast. CI has nvcc and no GPU: building needs no
driver. A configure that finds no CUDA compiler says so in one line.
"""
import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ratio_fast.ops import native

ROOT = Path(__file__).resolve().parents[1]
NO_NVCC_LINE = "ratio-fast: no CUDA compiler (nvcc) found"


def cmake(*args, env=None):
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake (the native kernels are optional without it)")
    done = subprocess.run(["cmake", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"cmake {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def find_nvcc():
    return shutil.which("nvcc") or next((p for p in ["/usr/local/cuda/bin/nvcc"] if os.access(p, os.X_OK)), None)


@pytest.mark.slow
def test_kernels_build_for_sm90_with_warnings_and_spills_as_errors(tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc on PATH or in /usr/local/cuda/bin: the CUDA kernels cannot be built here")
    build, lib_dir = tmp_path / "build", tmp_path / "lib"
    cmake("-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DRATIO_FAST_WERROR=ON",
          "-DCMAKE_CUDA_ARCHITECTURES=90", f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DRATIO_FAST_LIB_DIR={lib_dir}",
          "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON")
    cmake("--build", str(build), "--target", "all", "ratio_fast_cpu_tests", "--parallel", str(os.cpu_count() or 1))

    commands = json.loads((build / "compile_commands.json").read_text())
    cuda = [c["command"] for c in commands if c["file"].endswith(".cu")]
    cpp = [c["command"] for c in commands if c["file"].endswith(".cpp")]
    assert len(cuda) == 3 and len(cpp) == 4  # the CPU library's 3 and the test-only library's 1
    for command in cuda:  # the switch really reaches nvcc and ptxas
        assert "-Werror=all-warnings" in command and "-Xptxas=-warn-spills" in command
        assert "arch=compute_90,code=" in command and "compute_80" not in command
    assert all("-Werror" in command for command in cpp)
    for kind in ("cpu", "cuda"):  # the CUDA library loads without a driver: its runtime starts lazily
        lib = ctypes.CDLL(str(lib_dir / native.library_path(kind).name))
        assert lib.ratio_fast_abi_version() == native.ABI_VERSION


def test_a_configure_without_nvcc_says_so_in_one_line(tmp_path):
    env = dict(os.environ, CUDACXX=str(tmp_path / "no-such-nvcc"))  # CMake then finds no CUDA compiler
    out = cmake("-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DRATIO_FAST_LIB_DIR={tmp_path / 'lib'}", env=env)
    lines = [line for line in out.splitlines() if NO_NVCC_LINE in line]
    assert len(lines) == 1, out
    assert "RATIO_FAST_BUILD_CUDA:INTERNAL=OFF" in (tmp_path / "build" / "CMakeCache.txt").read_text()
