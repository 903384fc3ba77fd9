"""The fused ops behind typed wrappers: C++ on the CPU, Triton on CUDA, twins elsewhere.

    from dsd_fast import ops
    y = ops.ff_parser(x, weight)                       # irfft2(rfft2(x) * w), one pass
    ops.ff_parser(x, weight, out=buf[:, :c])           # straight into a cat buffer's slice
    h = ops.group_norm_silu(x, gamma, beta, 8, 1e-5, scale, shift)
    x = ops.gated_conv1x1(g, weight, bias, x)          # (conv1x1(g) + bias) * x
    y = ops.linear_attention(xn, w_qkv, w_out, b_out)  # LinearAttention before its norm
    y = ops.winograd_conv3x3(x, u, bias)               # conv3x3, u = winograd_weight(w)

    reference.py   the twins: the same formulas in plain PyTorch (the oracle, the fallback)
    winograd.py    Winograd F(4x4, 3x3): transforms, weight packing, its PyTorch twin
    cpu.py         loading the C++ kernels (csrc/, the build for this CPU: `dsd_fast._C_<isa>`)
    schemas.py     the ops' schemas and fake kernels (torch.compile / export)
    triton/        the CUDA kernels, one file per op, registered as the ops' CUDA kernels

Each wrapper runs its reference twin instead of a registered kernel when
  - the inputs are CPU tensors and the extension is not built (`AVAILABLE` is False; one
    warning at import says so) or `DSD_FAST_DISABLE_EXT=1` is set (no warning: asked for),
    or they are not float32;
  - the inputs are CUDA tensors and the Triton kernels are not registered (`GPU_KERNELS`);
  - autograd is recording for an input (the kernels are inference-only: no backward).
"""
from __future__ import annotations

import warnings

import torch

from . import reference as _ref
from . import schemas
from . import cpu as _cpu
from .winograd import winograd_conv3x3_ref, winograd_weight, winograd_weight_bf16

__all__ = ["AVAILABLE", "ISA", "WINOGRAD", "WINOGRAD_BF16", "GPU_KERNELS", "ff_parser",
           "group_norm_silu", "gated_conv1x1", "linear_attention", "winograd_conv3x3",
           "winograd_conv3x3_bf16", "winograd_weight", "winograd_weight_bf16",
           "fast_path_available", "register_gpu_kernels"]

AVAILABLE, _why = _cpu.load_extension()     # the C++ CPU kernels
ISA = _cpu.ISA                               # which build of them: avx512, avx2, portable
if _why is not None:
    warnings.warn(_why, RuntimeWarning, stacklevel=2)
# Why the CPU runs the twins, when it does (for `dsd-fast doctor`).
CPU_REASON = None if AVAILABLE else (_why or "DSD_FAST_DISABLE_EXT=1 asked for the twins")
if AVAILABLE:
    schemas.register_fakes()
# Whether the loaded build has the Winograd convolution (a build made before it existed does
# not: the fast models then keep oneDNN's direct convolutions).
WINOGRAD = AVAILABLE and schemas.op_defined("winograd_conv3x3")
# Its bfloat16 form: the AVX-512 build on a CPU with AVX512_BF16 (precision="bf16").
WINOGRAD_BF16 = (WINOGRAD and ISA == "avx512" and schemas.op_defined("winograd_conv3x3_bf16")
                 and "avx512_bf16" in (_cpu.cpu_flags() or ()))
if AVAILABLE and not WINOGRAD:
    warnings.warn("dsd_fast: the built C++ extension predates the Winograd convolution "
                  "(dsd_fast::winograd_conv3x3): the fast models run without it; "
                  f"{_cpu.BUILD_HINT.replace('build it', 'rebuild it', 1)}.",
                  RuntimeWarning, stacklevel=2)

GPU_KERNELS = False                          # the Triton kernels serve CUDA tensors


def register_gpu_kernels() -> bool:
    """Serve the ops on CUDA tensors with the Triton kernels (ops/triton), defining the
    schemas first if the C++ extension did not; guarded (ops/guard.py) unless
    DSD_FAST_KERNELS=triton, not at all with DSD_FAST_KERNELS=reference. Returns whether
    they are registered."""
    global GPU_KERNELS
    if GPU_KERNELS:
        return True
    from .guard import kernel_mode
    mode = kernel_mode()
    if mode == "reference":
        return False
    from .triton import TRITON_AVAILABLE, register_cuda_impls
    if not TRITON_AVAILABLE:
        return False
    schemas.define_missing()
    schemas.register_fakes()
    GPU_KERNELS = bool(register_cuda_impls(guarded=mode == "auto"))
    return GPU_KERNELS


def fast_path_available(device) -> bool:
    """Whether the fused kernels serve float32 tensors on `device` (else the twins run)."""
    kind = torch.device(device).type
    if kind == "cpu":
        return AVAILABLE
    if kind == "cuda":
        return GPU_KERNELS or register_gpu_kernels()
    return False


def _fast(*tensors: torch.Tensor | None) -> bool:
    """True when a registered kernel can take these inputs: the C++ kernel for float32 CPU
    tensors, the Triton kernel (once registered) for float32/float16/bfloat16 CUDA tensors."""
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if grad and t.requires_grad:
            return False                   # no backward in the fused kernels
        if t.device.type == "cpu":
            if not AVAILABLE or t.dtype != torch.float32:
                return False
        elif t.device.type == "cuda":
            if not GPU_KERNELS or t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                return False
        else:
            return False
    return True


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

    x (B, C, H, W); gamma, beta (C,); scale, shift (B, C) or (B, C, 1, 1) or None, taken in
    x's dtype.
    A channels_last x gives a channels_last result (no layout copy), on the CPU and CUDA.
    """
    b, c = x.shape[:2]
    # In x's dtype: under bfloat16 autocast a float32 x (from the Winograd convolution) meets
    # a time MLP's bfloat16 scale/shift; the formula promotes them anyway, and the kernel
    # takes only one dtype.
    scale = None if scale is None else scale.reshape(b, c).to(x.dtype)
    shift = None if shift is None else shift.reshape(b, c).to(x.dtype)
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
    b_out (Co,) -> (B, Co, H, W). A channels_last xn gives a channels_last result (no layout
    copy). CPU only (no Triton twin): elsewhere the reference runs.
    """
    if _fast(xn, w_qkv, w_out, b_out) and xn.device.type == "cpu":
        return torch.ops.dsd_fast.linear_attention.default(xn, w_qkv, w_out, b_out)
    return _ref.linear_attention_ref(xn, w_qkv, w_out, b_out)


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.conv2d(x, w, bias, padding=1) by Winograd F(4x4, 3x3), u = winograd_weight(w).

    x (B, C, H, W), C and K = bias.numel() multiples of 16 -> (B, K, H, W), channels_last
    from the C++ kernel (it reads NHWC: give it channels_last x, or it copies). Within ~1e-5
    of the output's scale of the direct convolution in float32 (tests/ops/test_winograd.py).
    CPU only: elsewhere, or for other dtypes, the PyTorch twin (ops/winograd.py) runs.
    """
    if WINOGRAD and _fast(x, u, bias) and x.device.type == "cpu":
        return torch.ops.dsd_fast.winograd_conv3x3.default(x, u, bias)
    return winograd_conv3x3_ref(x, u, bias)


def winograd_conv3x3_bf16(x: torch.Tensor, u16: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """winograd_conv3x3 with bfloat16 products (float32 accumulation, transforms and output),
    u16 = winograd_weight_bf16(w): what precision="bf16" runs the 3x3 convolutions with where
    `WINOGRAD_BF16` (AVX-512 build, AVX512_BF16 CPU); elsewhere the twin does the same
    arithmetic in PyTorch. x float32 or bfloat16 (taken as float32) -> float32 channels_last
    (from the kernel)."""
    x = x.float()
    if WINOGRAD_BF16 and x.device.type == "cpu" and not (torch.is_grad_enabled()
                                                          and x.requires_grad):
        return torch.ops.dsd_fast.winograd_conv3x3_bf16.default(x, u16, bias.float())
    return winograd_conv3x3_ref(x, u16, bias.float(), round_v_bf16=True)


if torch.cuda.is_available():
    register_gpu_kernels()
