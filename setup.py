"""dsd_fast packaging.

torch is pinned to a range that torch 2.13.0 (the CPU build on this project's machines)
satisfies: a bare `torch` requirement would pull a multi-GB CUDA build. The set-up commands
install torch==2.13.0 first, so this range installs nothing more.
"""
import glob
import platform

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

# The CPU fused ops (csrc/*.cpp) -> dsd_fast._C. AVX2 + FMA is the baseline on x86_64 (not
# -march=native: the build must run on any AVX2 machine); elsewhere the kernels' portable
# vector code is compiled with the default flags.
_SIMD = ["-mavx2", "-mfma"] if platform.machine().lower() in ("x86_64", "amd64") else []
_EXT = CppExtension(
    "dsd_fast._C",
    sources=sorted(glob.glob("csrc/*.cpp")),
    extra_compile_args={"cxx": ["-O3", "-fopenmp", *_SIMD]},
    extra_link_args=["-fopenmp"],
)

setup(
    name="dsd_fast",
    version="0.1.0",
    description="Fast, faithful inference for diffusion skin-lesion segmenters (DermoSegDiff)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dsd_fast", "dsd_fast.*", "kernels"]),
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
        # isic-challenge-scoring and SimpleITK are independent oracles the metric and STAPLE
        # tests compare against; triton runs the GPU kernels through its CPU interpreter.
        "test": ["pytest>=8", "pytest-benchmark>=4", "isic-challenge-scoring==5.6.0",
                 "SimpleITK>=2.3", "triton==3.9.*; platform_system == 'Linux'"],
        "crf": ["pydensecrf2>=1.1"],
    },
    entry_points={"console_scripts": ["dsd-fast=dsd_fast.cli:main"]},
    ext_modules=[_EXT],
    cmdclass={"build_ext": BuildExtension},
)
