"""Packaging for aselect-kernels: ``pip install -e .[test]``.

The CUDA C++ statistics kernel (``csrc/``) is built as ``aselect_kernels._cuda_stats`` only when a CUDA build of
torch and ``nvcc`` are importable/found at build time (``pip install --no-build-isolation -e .`` on a GPU machine;
``ASELECT_BUILD_CUDA=0`` skips it).  Everywhere else, CI included, the install is pure Python and the kernel is
built on first use on a CUDA machine instead (:mod:`aselect_kernels.ops.cuda_stats`).
"""

import os

from setuptools import find_packages, setup


def cuda_extension() -> dict:
    """``ext_modules``/``cmdclass`` for the CUDA kernel, or nothing when it cannot be built here."""
    if os.environ.get("ASELECT_BUILD_CUDA", "1") == "0":
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:  # isolated build environment or no torch: pure-Python install
        return {}
    if torch.version.cuda is None or CUDA_HOME is None:  # CPU torch, or no CUDA toolkit (nvcc) found
        return {}
    ext = CUDAExtension(
        "aselect_kernels._cuda_stats", ["csrc/aselect_stats.cu", "csrc/binding.cpp"], include_dirs=["csrc"],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
        optional=True,  # a failed build leaves the pure-Python install (and the build on first use)
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(
    name="aselect-kernels",
    version="0.1.0",
    description="Fused kernels for automatic timestep selection (A-SelecT) on Diffusion Transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["aselect_kernels", "aselect_kernels.*"]),
    package_data={"aselect_kernels": ["embedded/assets/*", "embedded/assets/*/*", "ops/*.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "diffusers>=0.30",
        "safetensors",
        "tqdm",
        "matplotlib",
        "pillow",
        "scikit-learn",
    ],
    extras_require={
        "triton": ["triton>=3.6"],
        "data": ["mlxtend"],
        "test": ["pytest", "pytest-benchmark", "scipy", "ruff", "hypothesis", "mlxtend"],
    },
    entry_points={"console_scripts": ["aselect=aselect_kernels.cli:main"]},
    **cuda_extension(),
)
