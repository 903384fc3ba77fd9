"""The C++ CPU kernels (csrc/): choosing the build for this CPU and loading it.

setup.py builds the kernels once per instruction set, each as a whole extension module:
`dsd_fast._C_avx512` (AVX-512 F/CD/BW/DQ/VL, 16-lane kernels), `dsd_fast._C_avx2` (AVX2 + FMA,
8 lanes) and `dsd_fast._C_portable` (the compiler's baseline, the same vector code compiled
without ISA flags); on other machines than x86_64 only the portable one. At import the best
one this CPU runs is loaded (its TORCH_LIBRARY blocks define `torch.ops.dsd_fast.*`); only
one per process, since each registers the same ops. `DSD_FAST_ISA=portable|avx2|avx512`
asks for a lower one (tests and benchmarks run every path this way); asking for one the CPU
lacks warns and takes the best it has. `AVAILABLE` says whether any was loaded, `ISA` which.
"""
from __future__ import annotations

import importlib
import os
import platform

DISABLE_ENV = "DSD_FAST_DISABLE_EXT"     # at run time: ignore a built extension
ISA_ENV = "DSD_FAST_ISA"                 # at run time: use this build of the kernels
BUILD_HINT = ("build it with `pip install --no-build-isolation -e .` (or "
              "`python setup.py build_ext --inplace`) in the repository root, without "
              "DSD_FAST_NO_EXT=1")

# Best first. The /proc/cpuinfo flags each build needs (the kernel lists a flag only when the
# OS also saves the registers it uses, so these are enough).
ISAS = ("avx512", "avx2", "portable")
ISA_CPU_FLAGS = {
    "avx512": ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"),
    "avx2": ("avx2", "fma"),
    "portable": (),
}

ISA: str | None = None                   # the build loaded, once load_extension() ran


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def supported_isas(flags: set[str] | None = None) -> list[str]:
    """The builds this CPU can run, best first. Not x86: the portable one only. Flags
    unreadable (not Linux): AVX2 is assumed (the previous baseline), AVX-512 is not."""
    if not _is_x86():
        return ["portable"]
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return ["avx2", "portable"]
    return [isa for isa in ISAS if all(f in flags for f in ISA_CPU_FLAGS[isa])]


def choose_isa(requested: str | None, supported: list[str]) -> tuple[str, str | None]:
    """(the build to load, a warning or None). `requested` is DSD_FAST_ISA's value."""
    if not requested:
        return supported[0], None
    requested = requested.strip().lower()
    if requested not in ISAS:
        return supported[0], (f"dsd_fast: {ISA_ENV}={requested!r} is not one of "
                              f"{', '.join(ISAS)}; using {supported[0]}")
    if requested not in supported:
        return supported[0], (f"dsd_fast: {ISA_ENV}={requested} asks for kernels this CPU "
                              f"cannot run (it has {', '.join(supported)}); using "
                              f"{supported[0]}")
    return requested, None


def load_extension() -> tuple[bool, str | None]:
    """(available, a warning message or None). Sets the module's ISA."""
    global ISA
    if os.environ.get(DISABLE_ENV, "") == "1":
        return False, None
    isa, warning = choose_isa(os.environ.get(ISA_ENV), supported_isas())
    try:
        module = importlib.import_module(f"dsd_fast._C_{isa}")
    except ImportError as e:
        msg = (f"dsd_fast: the C++ extension dsd_fast._C_{isa} is not built ({e}); on the "
               f"CPU the slower pure-PyTorch reference ops run instead. For the fast CPU "
               f"path, {BUILD_HINT}.")
        return False, msg if warning is None else f"{warning}\n{msg}"
    ISA = module.ISA
    return True, warning
