"""ratio-fast: fast RATIO (adversarial training on in- and out-distribution) for CUDA GPUs."""
from setuptools import find_packages, setup

setup(
    name="ratio-fast",
    version="0.1.0",
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
    extras_require={"dev": ["pytest>=8", "pytest-benchmark>=4"]},
    entry_points={"console_scripts": ["ratio-fast=ratio_fast.cli:main"]},
)
