"""What every Triton kernel file needs: triton itself (or a stand-in when it is not
installed), whether kernels are interpreted on the CPU, and the launch helpers. The kernel
files import this module, never their package, so the package can import them."""
from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
except ImportError:  # CPU-only install: keep the kernel modules importable.
    TRITON_AVAILABLE = False

    class _MissingTriton:
        """Stands in for `triton` and `triton.language` so that the kernel modules still
        import (decorators and `tl.constexpr` annotations are evaluated at import); the
        launchers call `require_triton()` before touching anything else."""

        constexpr = object

        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

    triton = tl = _MissingTriton()

# Whether the kernels defined at import time are interpreted (CPU tensors allowed); Triton's
# own reading of TRITON_INTERPRET, which is what its decorator uses.
INTERPRET = bool(TRITON_AVAILABLE and triton.knobs.runtime.interpret)

def require_triton(op: str) -> None:
    if not TRITON_AVAILABLE:
        raise RuntimeError(f"dsd_fast.ops.triton.{op}: Triton is not installed (a CUDA torch "
                           "ships it; else pip install triton); "
                           f"use the CPU op torch.ops.dsd_fast.{op} or the reference instead")


def check_device(op: str, *tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; CUDA unless the kernels were defined in interpreter mode."""
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise ValueError(f"dsd_fast.ops.triton.{op}: all tensors must be on one device, got "
                             f"{[str(u.device) for u in tensors]}")
    if device.type != "cuda" and not INTERPRET:
        raise ValueError(f"dsd_fast.ops.triton.{op}: CUDA tensors expected, got {device}; to run "
                         "the kernels on CPU tensors set TRITON_INTERPRET=1 before importing "
                         "dsd_fast.ops.triton")
    return device


def device_guard(device: torch.device):
    """Triton launches on the *current* CUDA device and PyTorch's current stream of that
    device: make the tensors' device current for the launch (no new stream is created)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def pad16(n: int) -> int:
    """Block extent for n: a power of two (Triton tiles) and at least 16 (tl.dot's minimum)."""
    return max(16, 1 << max(0, (int(n) - 1).bit_length()))
