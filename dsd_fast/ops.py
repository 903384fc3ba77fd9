"""Fused CPU ops (C++, csrc/) behind typed wrappers, with pure-PyTorch fallbacks.

    from dsd_fast import ops
    y = ops.ff_parser(x, weight)                       # irfft2(rfft2(x) * w), one pass
    ops.ff_parser(x, weight, out=buf[:, :c])           # straight into a cat buffer's slice
    h = ops.group_norm_silu(x, gamma, beta, 8, 1e-5, scale, shift)
    x = ops.gated_conv1x1(g, weight, bias, x)          # (conv1x1(g) + bias) * x
    y = ops.linear_attention(xn, w_qkv, w_out, b_out)  # LinearAttention before its norm

The ops are registered as `torch.ops.dsd_fast.*` by the extension module `dsd_fast._C`
(build: `pip install --no-build-isolation -e .`), with fake kernels here so that
`torch.compile` and export trace through them. Each wrapper runs its reference twin
(`dsd_fast._reference_ops`) instead when
  - the extension is not built (`AVAILABLE` is False; one warning at import says so),
  - `DSD_FAST_DISABLE_EXT=1` is set in the environment (no warning: asked for),
  - an input is not a float32 CPU tensor, or autograd is recording (the C++ kernels are
    inference-only: they have no backward).
"""
from __future__ import annotations

import os
import platform
import warnings

import torch

from . import _reference_ops as _ref

__all__ = ["AVAILABLE", "ff_parser", "group_norm_silu", "gated_conv1x1", "linear_attention"]

DISABLE_ENV = "DSD_FAST_DISABLE_EXT"
BUILD_HINT = ("build it with `pip install --no-build-isolation -e .` (or "
              "`python setup.py build_ext --inplace`) in the repository root")


def _cpu_has_avx2_fma() -> bool:
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


def _load_extension() -> tuple[bool, str | None]:
    """(available, why not as a warning message, or None for no warning)."""
    if os.environ.get(DISABLE_ENV, "") == "1":
        return False, None
    if not _cpu_has_avx2_fma():
        return False, ("dsd_fast: this CPU lacks AVX2/FMA, which the C++ extension is built "
                       "for; using the pure-PyTorch reference ops")
    try:
        from . import _C  # noqa: F401  (importing it registers torch.ops.dsd_fast.*)
    except ImportError as e:
        return False, (f"dsd_fast: the C++ extension dsd_fast._C is not built ({e}); using the "
                       f"slower pure-PyTorch reference ops. To get the fast path, {BUILD_HINT}.")
    return True, None


AVAILABLE, _why = _load_extension()
if _why is not None:
    warnings.warn(_why, RuntimeWarning, stacklevel=2)


def _fast(*tensors: torch.Tensor | None) -> bool:
    """True when a registered kernel can take these inputs: the C++ kernel for float32 CPU
    tensors, the Triton kernel (once `register_gpu_kernels` ran) for CUDA tensors."""
    if not AVAILABLE:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if grad and t.requires_grad:
            return False                   # no backward in the fused kernels
        if t.device.type == "cpu":
            if t.dtype != torch.float32:
                return False
        elif t.device.type == "cuda":
            if not GPU_KERNELS or t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                return False
        else:
            return False
    return True


GPU_KERNELS = False


def register_gpu_kernels() -> bool:
    """Serve the ops on CUDA tensors with the Triton kernels of the top-level `kernels`
    package (registered as the ops' CUDA implementations). Returns whether they are."""
    global GPU_KERNELS
    if not AVAILABLE:
        return False
    try:
        import kernels
    except ImportError:
        return False
    GPU_KERNELS = bool(kernels.register_cuda_impls())
    return GPU_KERNELS


# --------------------------------------------------------------------------------------
# Typed wrappers


def ff_parser(x: torch.Tensor, weight: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """irfft2(rfft2(x, norm="ortho") * complex(weight), s=(H, W), norm="ortho").

    x (B, C, H, W) float32; weight (C, H, W//2+1, 2) (real, imag). With `out` (x's shape,
    each (b, c) plane contiguous, e.g. `buf[:, :C]` of a contiguous concatenation buffer) the
    result is written there and `out` is returned; the rest of the buffer is untouched.
    """
    if out is None:
        if _fast(x, weight):
            return torch.ops.dsd_fast.ff_parser.default(x, weight)
        return _ref.ff_parser_ref(x, weight)
    if _fast(x, weight, out):
        torch.ops.dsd_fast.ff_parser_out.default(x, weight, out)
        return out
    return _ref.ff_parser_out_ref(x, weight, out)


def group_norm_silu(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, groups: int,
                    eps: float = 1e-5, scale: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None) -> torch.Tensor:
    """silu(group_norm(x, groups, gamma, beta, eps) * (scale + 1) + shift).

    x (B, C, H, W); gamma, beta (C,); scale, shift (B, C) or (B, C, 1, 1) or None.
    """
    b, c = x.shape[:2]
    scale = None if scale is None else scale.reshape(b, c)
    shift = None if shift is None else shift.reshape(b, c)
    if _fast(x, gamma, beta, scale, shift):
        return torch.ops.dsd_fast.group_norm_silu.default(x, gamma, beta, int(groups),
                                                          float(eps), scale, shift)
    return _ref.group_norm_silu_ref(x, gamma, beta, groups, eps, scale, shift)


def gated_conv1x1(g: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    """(conv1x1(g, weight) + bias) * x.

    g (B, Cg, H, W); weight (Cx, Cg, 1, 1) or (Cx, Cg); bias (Cx,); x (B, Cx, H, W).
    """
    if _fast(g, weight, bias, x):
        return torch.ops.dsd_fast.gated_conv1x1.default(g, weight, bias, x)
    return _ref.gated_conv1x1_ref(g, weight, bias, x)


def linear_attention(xn: torch.Tensor, w_qkv: torch.Tensor, w_out: torch.Tensor,
                     b_out: torch.Tensor) -> torch.Tensor:
    """The published LinearAttention (heads 4, dim_head 32) up to its output GroupNorm:
    to_out_conv(attention(xn)), computed without forming q, k, v or the attention output.

    xn (B, C, H, W) (the PreNorm'd input); w_qkv (384, C[, 1, 1]); w_out (Co, 128[, 1, 1]);
    b_out (Co,) -> (B, Co, H, W). CPU only (no Triton twin): elsewhere the reference runs.
    """
    if _fast(xn, w_qkv, w_out, b_out) and xn.device.type == "cpu":
        return torch.ops.dsd_fast.linear_attention.default(xn, w_qkv, w_out, b_out)
    return _ref.linear_attention_ref(xn, w_qkv, w_out, b_out)


# --------------------------------------------------------------------------------------
# Fake (meta) kernels: output shapes and dtypes only, for torch.compile / export.

if AVAILABLE:

    @torch.library.register_fake("dsd_fast::ff_parser")
    def _ff_parser_fake(x, weight):
        torch._check(x.dim() == 4, lambda: f"x must be (B, C, H, W), got {tuple(x.shape)}")
        c, h, w = x.shape[1:]
        torch._check(tuple(weight.shape) == (c, h, w // 2 + 1, 2),
                     lambda: f"weight must be {(c, h, w // 2 + 1, 2)}, got {tuple(weight.shape)}")
        return x.new_empty(x.shape)                       # contiguous, like the kernel

    @torch.library.register_fake("dsd_fast::ff_parser_out")
    def _ff_parser_out_fake(x, weight, out):
        torch._check(out.shape == x.shape,
                     lambda: f"out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
        return None

    @torch.library.register_fake("dsd_fast::group_norm_silu")
    def _group_norm_silu_fake(x, gamma, beta, groups, eps, scale=None, shift=None):
        torch._check(x.dim() == 4, lambda: f"x must be (B, C, H, W), got {tuple(x.shape)}")
        torch._check(x.shape[1] % groups == 0,
                     lambda: f"groups ({groups}) must divide C ({x.shape[1]})")
        return x.new_empty(x.shape)

    @torch.library.register_fake("dsd_fast::gated_conv1x1")
    def _gated_conv1x1_fake(g, weight, bias, x):
        torch._check(g.dim() == 4 and x.dim() == 4, lambda: "g and x must be (B, C, H, W)")
        torch._check(weight.shape[0] == x.shape[1] and weight.shape[1] == g.shape[1],
                     lambda: f"weight {tuple(weight.shape)} must be (Cx, Cg) = "
                             f"{(x.shape[1], g.shape[1])}")
        return x.new_empty(x.shape)

    @torch.library.register_fake("dsd_fast::linear_attention")
    def _linear_attention_fake(xn, w_qkv, w_out, b_out):
        torch._check(xn.dim() == 4, lambda: f"xn must be (B, C, H, W), got {tuple(xn.shape)}")
        torch._check(w_qkv.shape[0] == 384 and w_qkv.shape[1] == xn.shape[1],
                     lambda: f"w_qkv must be (384, {xn.shape[1]}), got {tuple(w_qkv.shape)}")
        torch._check(w_out.shape[1] == 128,
                     lambda: f"w_out must be (Co, 128), got {tuple(w_out.shape)}")
        b, _, h, w = xn.shape
        return xn.new_empty((b, w_out.shape[0], h, w))


if AVAILABLE and torch.cuda.is_available():
    register_gpu_kernels()
