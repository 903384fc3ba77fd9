"""The ops' schemas and their fake (meta) kernels, in one place.

csrc/register.cpp defines the same schemas in C++ when the extension is built (and adds the
CPU kernels). Without the extension (DSD_FAST_NO_EXT=1 builds, or a failed build) the
schemas are defined here, so that the Triton kernels can still be registered as the CUDA
implementations (ops/triton). The fake kernels give output shapes and dtypes only, so that
torch.compile and export trace through the ops.
"""
from __future__ import annotations

import torch

NAMESPACE = "dsd_fast"
SCHEMAS = {
    # y = irfft2(rfft2(x, norm="ortho") * view_as_complex(weight), s=(H, W), norm="ortho")
    "ff_parser": "(Tensor x, Tensor weight) -> Tensor",
    # the same, written into `out` (x's shape, each plane contiguous)
    "ff_parser_out": "(Tensor x, Tensor weight, Tensor(a!) out) -> ()",
    # silu(group_norm(x) * (scale + 1) + shift); scale/shift (B, C) optional
    "group_norm_silu": ("(Tensor x, Tensor gamma, Tensor beta, int groups, float eps, "
                        "Tensor? scale=None, Tensor? shift=None) -> Tensor"),
    # (conv1x1(g, weight) + bias) * x
    "gated_conv1x1": "(Tensor g, Tensor weight, Tensor bias, Tensor x) -> Tensor",
    # to_out_conv(linear_attention(xn)): the published LinearAttention before its GroupNorm
    "linear_attention": "(Tensor xn, Tensor w_qkv, Tensor w_out, Tensor b_out) -> Tensor",
    # conv2d(x, w, bias, padding=1) by Winograd F(4x4, 3x3); u = ops.winograd_weight(w)
    "winograd_conv3x3": "(Tensor x, Tensor u, Tensor bias) -> Tensor",
    # the same with bfloat16 products; u = ops.winograd_weight_bf16(w)
    "winograd_conv3x3_bf16": "(Tensor x, Tensor u, Tensor bias) -> Tensor",
}


def argument_names(name: str) -> list[str]:
    """The argument names of an op's schema, in order ("x", "weight", ...)."""
    inner = SCHEMAS[name].split("->")[0].strip()[1:-1]
    return [part.split("=")[0].split()[-1] for part in inner.split(",")]


def op_defined(name: str, namespace: str = NAMESPACE) -> bool:
    try:
        if torch._C._dispatch_has_kernel(f"{namespace}::{name}"):
            return True
    except RuntimeError:
        pass
    try:
        return hasattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False


_LIB = None          # keeps the Python-defined library alive


def define_missing() -> list[str]:
    """Define the schemas the extension did not (none when it is loaded); returns them."""
    global _LIB
    missing = [n for n in SCHEMAS if not op_defined(n)]
    if missing:
        _LIB = _LIB or torch.library.Library(NAMESPACE, "FRAGMENT")
        for n in missing:
            _LIB.define(n + SCHEMAS[n])
    return missing


_FAKES_DONE = False


def register_fakes() -> None:
    """Fake kernels for every defined op (once per process)."""
    global _FAKES_DONE
    if _FAKES_DONE:
        return
    _FAKES_DONE = True

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
        # the kernels keep channels_last (CPU: NHWC loops; CUDA: pixel strides); else NCHW
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return torch.empty(x.shape, dtype=x.dtype, device=x.device,
                               memory_format=torch.channels_last)
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
        # the CPU kernel keeps channels_last (NHWC packing); else NCHW
        if not xn.is_contiguous() and xn.is_contiguous(memory_format=torch.channels_last):
            return torch.empty((b, w_out.shape[0], h, w), dtype=xn.dtype, device=xn.device,
                               memory_format=torch.channels_last)
        return xn.new_empty((b, w_out.shape[0], h, w))

    if not op_defined("winograd_conv3x3"):        # an extension built before this op
        return

    @torch.library.register_fake("dsd_fast::winograd_conv3x3")
    def _winograd_conv3x3_fake(x, u, bias):
        torch._check(x.dim() == 4, lambda: f"x must be (B, C, H, W), got {tuple(x.shape)}")
        k = bias.numel()
        torch._check(u.dim() == 4 and u.shape[1] == 36 and u.shape[2] == x.shape[1]
                     and u.shape[0] * u.shape[3] >= k,
                     lambda: f"u {tuple(u.shape)} does not fit {x.shape[1]} input and {k} "
                             "output channels")
        b, _, h, w = x.shape
        return torch.empty((b, k, h, w), dtype=x.dtype, device=x.device,   # NHWC, like the kernel
                           memory_format=torch.channels_last)

    if not op_defined("winograd_conv3x3_bf16"):
        return

    @torch.library.register_fake("dsd_fast::winograd_conv3x3_bf16")
    def _winograd_conv3x3_bf16_fake(x, u, bias):
        torch._check(x.dim() == 4, lambda: f"x must be (B, C, H, W), got {tuple(x.shape)}")
        torch._check(u.dim() == 5 and u.shape[1] == 36 and 2 * u.shape[2] == x.shape[1],
                     lambda: f"u {tuple(u.shape)} does not fit {x.shape[1]} input channels")
        b, _, h, w = x.shape
        return torch.empty((b, bias.numel(), h, w), dtype=torch.float32, device=x.device,
                           memory_format=torch.channels_last)
