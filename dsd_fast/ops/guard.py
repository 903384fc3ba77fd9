"""Kernel guards: a GPU kernel proves itself against its twin before it is trusted.

On a user's GPU a Triton kernel can fail to compile (another triton or GPU than the ones
it was written on, too much shared memory) or compute the wrong thing. The first time each
guarded kernel meets a new class of inputs (op, shapes after the batch axis, dtype, memory
layout) it runs once beside its PyTorch twin on the same inputs; a compile or launch error,
or a difference beyond the stated tolerance, is reported once (which kernel, which class,
why) and that class runs on the twin from then on. Later calls of a verified class cost
nothing extra.

DSD_FAST_KERNELS overrides: "reference" never registers the GPU kernels (the twins run),
"triton" registers them without the check, "auto" (default) registers them guarded.
"""
from __future__ import annotations

import os
import warnings

import torch

ENV = "DSD_FAST_KERNELS"
MODES = ("auto", "triton", "reference")
# |kernel - twin| <= ATOL_REL * max|twin| + RTOL * |twin|, per output dtype: float32 kernels
# sum at most a few hundred products per output (their tests measure <= 4e-6 against float64);
# half-precision outputs are judged at a few of their ulps.
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2 ** -6),
              torch.float16: (5e-3, 2 ** -9)}


class KernelMismatchWarning(RuntimeWarning):
    """A GPU kernel failed or disagreed with its twin; the twin runs instead."""


def kernel_mode() -> str:
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        warnings.warn(f"{ENV}={mode!r} is not one of {MODES}; using 'auto'", RuntimeWarning)
        return "auto"
    return mode


def input_class(*args) -> tuple:
    """What decides a kernel's code path: every tensor's shape after the batch axis, dtype,
    device and whether it is channels_last; other arguments as they are."""
    key = []
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((tuple(a.shape[1:]), a.dtype, a.device.type,
                        a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last)
                        and not a.is_contiguous()))
        else:
            key.append(a)
    return tuple(key)


def close_enough(got: torch.Tensor, want: torch.Tensor) -> tuple[bool, float]:
    """(within tolerance, max |got - want| / max |want|)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, float("inf")
    atol_rel, rtol = TOLERANCES.get(want.dtype, TOLERANCES[torch.float32])
    g, w = got.detach().double(), want.detach().double()
    scale = w.abs().max().clamp_min(1e-30)
    err = (g - w).abs()
    ok = bool(torch.isfinite(g).all()) and bool((err <= atol_rel * scale + rtol * w.abs()).all())
    return ok, float(err.max() / scale)


class KernelGuard:
    """`kernel(*args)` checked once per input class against `twin(*args)` (same signature,
    same result); after a failure or mismatch, `twin` serves that class."""

    def __init__(self, name: str, kernel, twin):
        self.name, self.kernel, self.twin = name, kernel, twin
        self.verdicts: dict[tuple, bool] = {}
        self.reasons: dict[tuple, str] = {}

    def __call__(self, *args):
        key = input_class(*args)
        ok = self.verdicts.get(key)
        if ok is None:
            ok, result = self._check(key, args)
            if result is not None:
                return result
        return self.kernel(*args) if ok else self.twin(*args)

    def _check(self, key, args):
        want = self.twin(*args)
        try:
            got = self.kernel(*args)
            ok, err = close_enough(got, want)
            why = None if ok else f"differs from its PyTorch twin by {err:.3g} of scale"
        except Exception as e:            # compile or launch error: any exception counts
            ok, why = False, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        self.verdicts[key] = ok
        if not ok:
            self.reasons[key] = why
            warnings.warn(f"dsd_fast: the Triton kernel {self.name} {why} on inputs "
                          f"{_describe(args)}; the PyTorch twin serves these inputs from now "
                          f"on (set {ENV}=reference to skip the kernels)", KernelMismatchWarning,
                          stacklevel=3)
        return ok, want                   # the twin's result is right either way

    def status(self) -> dict:
        return {"verified": sum(self.verdicts.values()),
                "refused": {str(k): self.reasons[k] for k in self.reasons}}


def _describe(args) -> str:
    return ", ".join(f"{tuple(a.shape)} {str(a.dtype).replace('torch.', '')}"
                     for a in args if isinstance(a, torch.Tensor))
