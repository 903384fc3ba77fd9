"""dsd_fast packaging.

torch is pinned to a range that torch 2.13.0 (the CPU build on this project's machines)
satisfies: a bare `torch` requirement would pull a multi-GB CUDA build. The set-up commands
install torch==2.13.0 first, so this range installs nothing more.
"""
from setuptools import find_packages, setup

setup(
    name="dsd_fast",
    version="0.1.0",
    description="Fast, faithful inference for diffusion skin-lesion segmenters (DermoSegDiff)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dsd_fast", "dsd_fast.*"]),
    package_data={"dsd_fast": ["weights/*.safetensors", "samples/*.png"]},
    install_requires=[
        "torch>=2.13.0,<2.14",
        "numpy>=1.24",
        "pillow>=10",
        "safetensors>=0.4",
        "scipy>=1.10",
        "tqdm>=4.60",
    ],
    extras_require={
        # The last two are independent oracles the metric and STAPLE tests compare against.
        "test": ["pytest>=8", "pytest-benchmark>=4", "isic-challenge-scoring==5.6.0",
                 "SimpleITK>=2.3"],
    },
    entry_points={"console_scripts": ["dsd-fast=dsd_fast.cli:main"]},
)
