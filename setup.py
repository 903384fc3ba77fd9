"""dsd_fast packaging.

torch: `install_requires` accepts any torch from 2.4 on (torch.library.register_fake, which
the ops' fake kernels use, is 2.4's), so a CUDA user's own torch is kept. A bare `torch`
requirement with no torch installed would pull a multi-GB CUDA build: the set-up commands
(Makefile) install torch==2.13.0, the CPU build on this project's machines, first.

The C++ CPU ops (csrc/*.cpp -> dsd_fast._C_<isa>) are built against the installed torch, so the
install needs `--no-build-isolation`. DSD_FAST_NO_EXT=1 skips them: the package then runs
the ops' pure-PyTorch twins on the CPU (one warning at import says so) and the Triton
kernels on CUDA GPUs.
"""
import glob
import os
import platform
import re

from setuptools import find_packages, setup

NO_EXT = os.environ.get("DSD_FAST_NO_EXT", "") == "1"


# One build of the kernels per instruction set, each a whole extension module of its own
# (dsd_fast/ops/cpu.py imports exactly one, chosen from the CPU's features at run time).
# Whole modules rather than per-ISA files inside one module: a module compiled with AVX-512
# also holds its own copies of every inline/template function it uses (torch's, the standard
# library's); within one shared object the linker would keep one copy of each, possibly the
# AVX-512 one, and an AVX2 machine would crash in code that never asked for AVX-512.
# Never -march=native: the build must run on other machines than the one it was made on.
ISA_FLAGS = {
    "portable": [],
    "avx2": ["-mavx2", "-mfma"],
    # Skylake-X / Zen 4 and later: F + CD + BW + DQ + VL (x86-64-v4).
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512cd", "-mavx512bw", "-mavx512dq",
               "-mavx512vl"],
}


def extensions():
    """The CPU fused ops, unless DSD_FAST_NO_EXT=1: on x86_64 one module per ISA
    (dsd_fast._C_portable, _C_avx2, _C_avx512); elsewhere the portable one only."""
    if NO_EXT:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    exts = [CppExtension(f"dsd_fast._C_{isa}", sources=sorted(glob.glob("csrc/*.cpp")),
                         extra_compile_args={"cxx": ["-O3", "-fopenmp", "-Wno-psabi", *flags]},
                         extra_link_args=["-fopenmp"])
            for isa, flags in ISA_FLAGS.items() if x86 or isa == "portable"]
    return exts, {"build_ext": BuildExtension}


EXT_MODULES, CMDCLASS = extensions()
# one version, in dsd_fast/version.py (read, not imported: the package needs torch)
VERSION = re.search(r'__version__ = "([^"]+)"', open("dsd_fast/version.py").read()).group(1)

setup(
    name="dsd_fast",
    version=VERSION,
    description="Fast, faithful inference for diffusion skin-lesion segmenters (DermoSegDiff)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dsd_fast", "dsd_fast.*"]),
    package_data={"dsd_fast": ["weights/*.safetensors", "samples/*.png", "serve/page/*"]},
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "pillow>=10",
        "safetensors>=0.4",
        "scipy>=1.10",
        "tqdm>=4.60",
    ],
    extras_require={
        # isic-challenge-scoring and SimpleITK are independent oracles the metric and STAPLE
        # tests compare against; triton runs the GPU kernels through its CPU interpreter
        # (not pinned: a CUDA torch brings its own; the Makefile pins it for the CPU CI).
        # selenium drives Chromium (Debian's chromium + chromium-driver, .ci/install_browser.sh)
        # in the web page's test; requests is the HTTP client of the serve tests and bench.
        "test": ["pytest>=8", "pytest-benchmark>=4", "isic-challenge-scoring==5.6.0",
                 "SimpleITK>=2.3", "triton>=3.0; platform_system == 'Linux'",
                 "selenium>=4.20", "requests>=2.28"],
        "crf": ["pydensecrf2>=1.1"],
        # scale-out: `dsd-fast segment --ray` (Ray Data tasks) and
        # `dsd-fast serve --ray` (Ray Serve's replicas and request batching)
        "ray": ["ray[data,serve]>=2.40"],
        # `dsd-fast serve`: the HTTP service and its page
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.18"],
        # `dsd-fast export --onnx` (torch.onnx's dynamo exporter) and its check in ORT
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        # the peer engines of bench/bench_peers.py
        "bench": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18", "openvino>=2024.0"],
        # volumes (dsd_fast.volumes): NIfTI and BraTS case folders (nibabel), DICOM (pydicom)
        "volumes": ["nibabel>=5.0", "pydicom>=2.4"],
    },
    entry_points={"console_scripts": ["dsd-fast=dsd_fast.cli:main"]},
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
)
