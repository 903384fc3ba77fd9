"""The C++ CPU kernels (csrc/, built as the extension module `dsd_fast._C`): loading them.

Importing `dsd_fast._C` runs csrc/register.cpp's TORCH_LIBRARY blocks, which define the ops
`torch.ops.dsd_fast.*` and their CPU kernels. `AVAILABLE` says whether that happened; when it
did not, one warning says why (not when DSD_FAST_DISABLE_EXT=1 asked for it).
"""
from __future__ import annotations

import os
import platform

DISABLE_ENV = "DSD_FAST_DISABLE_EXT"     # at run time: ignore a built extension
BUILD_HINT = ("build it with `pip install --no-build-isolation -e .` (or "
              "`python setup.py build_ext --inplace`) in the repository root, without "
              "DSD_FAST_NO_EXT=1")


def cpu_has_avx2_fma() -> bool:
    """The kernels are compiled with -mavx2 -mfma on x86_64: importing them elsewhere would
    crash with SIGILL on the first op instead of raising."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True                       # built with the portable flags there
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx2" in flags and "fma" in flags
    except OSError:
        pass
    return True                           # cannot tell (not Linux): trust the build


def load_extension() -> tuple[bool, str | None]:
    """(available, why not as a warning message, or None for no warning)."""
    if os.environ.get(DISABLE_ENV, "") == "1":
        return False, None
    if not cpu_has_avx2_fma():
        return False, ("dsd_fast: this CPU lacks AVX2/FMA, which the C++ extension is built "
                       "for; using the pure-PyTorch reference ops")
    try:
        from .. import _C  # noqa: F401  (importing it registers torch.ops.dsd_fast.*)
    except ImportError as e:
        return False, (f"dsd_fast: the C++ extension dsd_fast._C is not built ({e}); on the "
                       f"CPU the slower pure-PyTorch reference ops run instead. For the fast "
                       f"CPU path, {BUILD_HINT}.")
    return True, None
