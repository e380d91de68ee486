"""Packaging for aselect-kernels: ``pip install -e .[test]``."""

from setuptools import find_packages, setup

setup(
    name="aselect-kernels",
    version="0.1.0",
    description="Fused kernels for automatic timestep selection (A-SelecT) on Diffusion Transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["aselect_kernels", "aselect_kernels.*"]),
    package_data={"aselect_kernels": ["assets/*", "assets/*/*"]},
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
        "test": ["pytest", "pytest-benchmark", "scipy", "ruff", "hypothesis"],
    },
    entry_points={"console_scripts": ["aselect=aselect_kernels.cli:main"]},
)
