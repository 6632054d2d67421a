"""ratio-fast: fast RATIO (adversarial training on in- and out-distribution) for CUDA GPUs.

Installing also builds the native kernels (kernels/, CMakeLists.txt) into ratio_fast/ops when
cmake and a C++ compiler are there, and their CUDA part when nvcc is found. They are optional:
a failed build prints a warning and the install goes on. Environment (see kernels/README.md):
RATIO_FAST_NO_NATIVE=1 skips the native build, RATIO_FAST_NO_CUDA=1 its CUDA part, and
RATIO_FAST_CUDA_ARCHS (e.g. "90") overrides the CUDA architectures.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = Path(__file__).resolve().parent
NATIVE_BUILD_DIR = ROOT / "build" / "native"
# The version is the package's (`ratio_fast.__version__`, from ratio_fast/version.py: what `ratio-fast
# --version` prints), read as text: importing the package here would need torch before it is installed.
VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "ratio_fast" / "version.py").read_text(), re.M).group(1)


def build_native() -> None:
    """CMake-build the native libraries into ratio_fast/ops; warn, never fail, when that cannot be done."""
    if os.environ.get("RATIO_FAST_NO_NATIVE") == "1":
        _say("RATIO_FAST_NO_NATIVE=1: not building the native kernels")
        return
    cmake = shutil.which("cmake")
    if cmake is None:
        _warn("cmake not found: the native kernels are not built (backend='native' will be unavailable)")
        return
    configure = [cmake, "-S", str(ROOT), "-B", str(NATIVE_BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release",
                 "-DRATIO_FAST_CUDA=" + ("OFF" if os.environ.get("RATIO_FAST_NO_CUDA") == "1" else "ON")]
    if os.environ.get("RATIO_FAST_CUDA_ARCHS"):
        configure.append("-DCMAKE_CUDA_ARCHITECTURES=" + os.environ["RATIO_FAST_CUDA_ARCHS"])
    if shutil.which("ninja") and not (NATIVE_BUILD_DIR / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]  # only on the first configure: CMake refuses a generator change
    if not _run(configure, "configuring the native kernels"):
        shutil.rmtree(NATIVE_BUILD_DIR, ignore_errors=True)  # a cached broken toolchain would stick
        return
    cache = (NATIVE_BUILD_DIR / "CMakeCache.txt").read_text()
    targets = ["ratio_fast_cpu"] + (["ratio_fast_cuda"] if re.search(r"RATIO_FAST_BUILD_CUDA:INTERNAL=ON", cache) else [])
    for target in targets:  # one at a time, so a CUDA failure still leaves the CPU library
        build = [cmake, "--build", str(NATIVE_BUILD_DIR), "--target", target, "--parallel", str(os.cpu_count() or 1)]
        _run(build, f"building {target}")


def _run(command: list[str], what: str) -> bool:
    try:
        subprocess.run(command, check=True, stdout=sys.stderr)  # pip shows it with -v
        return True
    except (OSError, subprocess.CalledProcessError) as error:
        _warn(f"{what} failed ({error}); the install goes on without it (backend='native' unavailable)")
        return False


def _say(message: str) -> None:
    print(f"ratio-fast: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    _say(f"WARNING: {message}")


class BuildPyWithNative(build_py):
    """Wheels and PEP 660 editable installs: the libraries exist before the package files are collected."""

    def run(self):
        build_native()
        super().run()


class DevelopWithNative(develop):
    """Legacy `setup.py develop` editable installs, which do not run build_py."""

    def run(self):
        build_native()
        super().run()


class BinaryDistribution(Distribution):
    """The package can carry native libraries, so its wheels are platform wheels."""

    def has_ext_modules(self):
        return True


setup(
    name="ratio-fast",
    version=VERSION,
    # An SPDX expression (LICENSE holds the text); setuptools deprecates the "License ::" classifier beside it.
    license="MIT",
    license_files=["LICENSE"],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    description="Fast RATIO training (L2 adversarial training + adversarial Outlier Exposure) "
    "with a fused L2 PGD attack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ratio_fast", "ratio_fast.*"]),
    install_requires=[
        # 2.11 is what the GPU machines run, 2.13 the CPU build; both must keep working.
        "torch>=2.11,<2.14",
        "triton>=3.4",
        "numpy>=1.24",
        # DALI decodes and augments on the GPU; the bare "nvidia-dali" name is a placeholder.
        'nvidia-dali-cuda130>=1.50; platform_system == "Linux"',
        "pillow>=9",  # PNG/JPEG folders on the torch loader, counterfactual grids
        "safetensors>=0.4",  # model export
    ],
    extras_require={
        # `ratio-fast eval --autoattack` (AutoAttack itself, fra31's code as packaged on PyPI, MIT) and SVHN's .mat
        "eval": ["pyautoattack>=0.2", "scipy>=1.7"],
        "tensorboard": ["tensorboard>=2.10"],  # train --tensorboard
        "plots": ["matplotlib>=3.6"],  # curves.png of a run, ood.png of eval
        "dev": ["pytest>=8", "pytest-benchmark>=4", "pyautoattack>=0.2", "scipy>=1.7", "tensorboard>=2.10",
                "matplotlib>=3.6"],
    },
    entry_points={"console_scripts": ["ratio-fast=ratio_fast.cli:main"]},
    package_data={"ratio_fast.ops": ["*.so", "*.dylib"]},  # the native libraries, when built
    cmdclass={"build_py": BuildPyWithNative, "develop": DevelopWithNative},
    distclass=BinaryDistribution,
)
