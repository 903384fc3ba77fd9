"""Triton kernels: the NVIDIA GPU path of the dsd_fast fused ops.

One file per kernel (ff_parser, group_norm_silu, gated_conv1x1), each holding a private
`@triton.jit` kernel, a launcher that checks shapes and picks block sizes, and the formula in
a comment beside the code. The CPU path is csrc/ (C++); the readable oracles are
dsd_fast/ops/reference.py and the DermoSegDiff layers (families/dermosegdiff/layers.py).

This package imports without Triton (`TRITON_AVAILABLE` is then False and the launchers raise
a RuntimeError saying so), so the CPU-only install never needs it.

Running on the CPU: Triton's interpreter (`TRITON_INTERPRET=1`) executes the same kernels on
CPU tensors with numpy. Triton reads that variable when a kernel is *defined*, i.e. when the
kernel modules are imported, so it must be set before the first
`import dsd_fast.ops.triton.<op>`.
`INTERPRET` records what was in force at import.

Registration: `register_cuda_impls()` makes these kernels the CUDA implementations of the
torch ops `dsd_fast::ff_parser`, `ff_parser_out`, `group_norm_silu` and `gated_conv1x1`
whose schemas csrc/register.cpp (or, without the extension, ops/schemas.py) defines. It does
nothing for ops that are not defined yet and checks each schema's argument names first.
"""
from __future__ import annotations

import warnings

import torch

from .runtime import (INTERPRET, TRITON_AVAILABLE, check_device, device_guard,  # noqa: F401
                      pad16, require_triton, tl, triton)

__all__ = ["TRITON_AVAILABLE", "INTERPRET", "register_cuda_impls", "REGISTERED"]


# ----------------------------------------------------------------------------- registration

# The ops served here (linear_attention has no Triton kernel: the reassociated PyTorch form
# runs on GPUs). A schema whose argument names differ from ops/schemas.py is not registered:
# a silently mismatched argument order would compute garbage.
TRITON_OPS = ("ff_parser", "ff_parser_out", "group_norm_silu", "gated_conv1x1")

# Qualified names registered by this process (registration is once per process: a second
# CUDA kernel for the same op would override the first with a warning).
REGISTERED: set[str] = set()


GUARDS: dict = {}          # op name -> KernelGuard, when registered guarded


def _cuda_impls(guarded: bool = True):
    """The CUDA implementations: each Triton kernel, behind a KernelGuard (ops/guard.py)
    unless `guarded` is False (DSD_FAST_KERNELS=triton)."""
    from .. import reference as ref
    from ..guard import KernelGuard, input_class
    from .ff_parser import MAX_SIZE, ff_parser
    from .gated_conv1x1 import gated_conv1x1
    from .group_norm_silu import group_norm_silu

    def fits(x) -> bool:                        # larger planes: cuFFT through the twin
        return max(x.shape[-2:]) <= MAX_SIZE

    def gns(x, gamma, beta, groups, eps, scale=None, shift=None):
        return group_norm_silu(x, gamma, beta, groups, eps, scale, shift)

    def gns_ref(x, gamma, beta, groups, eps, scale=None, shift=None):
        return ref.group_norm_silu_ref(x, gamma, beta, groups, eps, scale, shift)

    impls = {"ff_parser": lambda x, weight: ff_parser(x, weight), "group_norm_silu": gns,
             "gated_conv1x1": gated_conv1x1}
    if guarded:
        twins = {"ff_parser": ref.ff_parser_ref, "group_norm_silu": gns_ref,
                 "gated_conv1x1": ref.gated_conv1x1_ref}
        for name in list(impls):
            GUARDS[name] = impls[name] = KernelGuard(name, impls[name], twins[name])

    kernel_ff = impls["ff_parser"]
    impls["ff_parser"] = lambda x, weight: (kernel_ff(x, weight) if fits(x)
                                            else ref.ff_parser_ref(x, weight))

    def ff_parser_out(x, weight, out):          # schema returns (): mutates `out`
        if not fits(x):
            ref.ff_parser_out_ref(x, weight, out)
            return
        guard = GUARDS.get("ff_parser")
        ok = True if guard is None else guard.verdicts.get(input_class(x, weight))
        if ok is None:                          # first of its class: checked functionally
            out.copy_(guard(x, weight))
        elif ok:
            ff_parser(x, weight, out=out)
        else:
            ref.ff_parser_out_ref(x, weight, out)
    impls["ff_parser_out"] = ff_parser_out
    return impls


def register_cuda_impls(namespace: str = "dsd_fast", guarded: bool = True) -> bool:
    """Register the Triton kernels as the CUDA kernels of `<namespace>::<op>`.

    Only ops that are already defined (by `dsd_fast._C_<isa>` or ops/schemas.py) and whose schema
    has the expected argument names are registered; an op that already has a CUDA kernel is
    left alone. Returns True if at least one op is now served by these kernels, False when
    nothing was registered (Triton missing, or the ops not defined yet). `namespace` exists
    for tests, which define look-alike ops elsewhere so as not to collide with the extension.
    """
    if not TRITON_AVAILABLE:
        return False
    from ..schemas import argument_names, op_defined
    impls = None
    for name in TRITON_OPS:
        expected = argument_names(name)
        qualname = f"{namespace}::{name}"
        if qualname in REGISTERED or not op_defined(name, namespace):
            continue
        overload = getattr(getattr(torch.ops, namespace), name).default
        got = [a.name for a in overload._schema.arguments]
        if got != expected:
            warnings.warn(f"ops.triton.register_cuda_impls: {qualname} has arguments {got}, "
                          f"expected {expected}; its CUDA kernel is not registered")
            continue
        if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"):
            continue                                      # someone else serves CUDA already
        impls = impls or _cuda_impls(guarded)
        torch.library.impl(qualname, "CUDA", impls[name])
        REGISTERED.add(qualname)
    return any(q.startswith(f"{namespace}::") for q in REGISTERED)
