"""glibc malloc settings for the CPU sampling loop: keep freed activations in the process.

A denoiser forward allocates and frees a few hundred activation tensors of 0.1-15 MB. With
glibc's defaults, blocks above the (dynamic) mmap threshold are mmap'ed and unmapped on free,
and the heap's free top is trimmed back to the OS, so the next step touches fresh pages: the
bundled model took ~4,300 page faults per batch-5 forward, ~100,000 per segment() of one
image (25 steps x 5), at a few microseconds each on a virtual machine. Raising the mmap and
trim thresholds keeps those pages mapped from step to step: <1,000 faults per image and
segment() ~1.1x faster at 2 threads (medians of alternating fresh processes; the machine's
noise is of the same size, docs/PERFORMANCE.md).
This is what jemalloc / tcmalloc (the LD_PRELOAD advice of CPU inference guides) give by
default, done with glibc's own `mallopt`, so nothing is preloaded.

The cost: memory freed by the process stays resident (up to the peak of the run) instead of
going back to the OS between forwards; tensors above 32 MiB are still mmap'ed and returned.
Process-wide, so it is applied once, when a CPU pipeline first hands out its denoiser
(`Pipeline.denoiser`, which every segment() and sample() goes through), and never where
`DSD_FAST_MALLOC=system` is set in the environment or the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20      # glibc's ceiling for it on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1 << 30       # free heap top kept resident up to 1 GiB
ENV = "DSD_FAST_MALLOC"

_state: dict = {"applied": None}


def tune_malloc() -> bool:
    """Apply the settings above once per process; True if they are in effect."""
    if _state["applied"] is None:
        _state["applied"] = _apply()
    return _state["applied"]


def _apply() -> bool:
    if os.environ.get(ENV, "").strip().lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success (the trim threshold alone made things worse: measured)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
