"""Noise-feature gate: a 1x1 convolution as a GEMM over channels, bias and gate in its epilogue.

    g (B, Cg, H, W), weight (Cx, Cg, 1, 1) or (Cx, Cg), bias (Cx,), x (B, Cx, H, W)
    y[b, o, p] = (sum_i weight[o, i] * g[b, i, p] + bias[o]) * x[b, o, p]      p = h * W + w

Per batch entry this is Y_b (Cx, P) = W (Cx, Cg) @ G_b (Cg, P), tiled (BLOCK_M output
channels x BLOCK_N pixels) per program with a K loop over Cg in BLOCK_K steps; the
accumulator never leaves registers, so conv1x1(g) + bias is never materialised: the epilogue
adds the bias, multiplies by the x tile and stores.

Layouts: pixels are addressed through one stride, so NCHW and NHWC (channels_last) inputs
both work without copies (Triton specialises the stride that equals 1). float32 uses
input_precision="ieee" (matches F.conv2d with TF32 off to ~1e-6); bf16/fp16 inputs use the
tensor cores in their own dtype with a float32 accumulator, and the weight is cast to g's
dtype tile by tile (the cast autocast would make).
"""
from __future__ import annotations

import torch

from .runtime import check_device, device_guard, pad16, require_triton, tl, triton


@triton.jit
def _gated_conv1x1_kernel(
    g_ptr, w_ptr, bias_ptr, x_ptr, y_ptr,
    CX, CG, P,
    sgb, sgc, sgp, swo, swi, sxb, sxc, sxp, syb, syc, syp,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)                  # pixel tile (largest count: grid axis 0)
    pid_m = tl.program_id(1)                  # output-channel tile
    b = tl.program_id(2).to(tl.int64)
    ro = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)      # output channels o
    rp = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)      # pixels p
    omask = ro < CX
    pmask = rp < P

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, CG, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)                # input channels i
        kmask = rk < CG
        w = tl.load(w_ptr + ro[:, None] * swo + rk[None, :] * swi,
                    mask=omask[:, None] & kmask[None, :], other=0.0)          # (BM, BK)
        gt = tl.load(g_ptr + b * sgb + rk[:, None] * sgc + rp[None, :] * sgp,
                     mask=kmask[:, None] & pmask[None, :], other=0.0)         # (BK, BN)
        if IEEE:
            acc = tl.dot(w.to(tl.float32), gt.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(w.to(gt.dtype), gt, acc)

    # epilogue: (acc + bias[o]) * x[b, o, p]
    bias = tl.load(bias_ptr + ro, mask=omask, other=0.0).to(tl.float32)
    mask = omask[:, None] & pmask[None, :]
    xv = tl.load(x_ptr + b * sxb + ro[:, None] * sxc + rp[None, :] * sxp,
                 mask=mask, other=0.0).to(tl.float32)
    y = (acc + bias[:, None]) * xv
    tl.store(y_ptr + b * syb + ro[:, None] * syc + rp[None, :] * syp,
             y.to(y_ptr.dtype.element_ty), mask=mask)


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _flat(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(stride_b, stride_c, stride_p) if the (H, W) pixels flatten to one stride p."""
    sb, sc, sh, sw = t.stride()
    if t.shape[2] == 1 or sh == t.shape[3] * sw:
        return sb, sc, sw
    return None


def _flattenable(t: torch.Tensor) -> torch.Tensor:
    return t if _flat(t) is not None else t.contiguous()


def gated_conv1x1(g: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    """(conv1x1(g, weight) + bias) * x; returns (B, Cx, H, W) in x's dtype and memory format."""
    require_triton("gated_conv1x1")
    if g.dim() != 4 or x.dim() != 4:
        raise ValueError(f"ops.triton.gated_conv1x1: g and x must be (B, C, H, W), got "
                         f"{tuple(g.shape)} and {tuple(x.shape)}")
    B, CG, H, W = g.shape
    CX = x.shape[1]
    if (x.shape[0], x.shape[2], x.shape[3]) != (B, H, W):
        raise ValueError(f"ops.triton.gated_conv1x1: x {tuple(x.shape)} and g {tuple(g.shape)} must "
                         "agree in batch and plane size")
    if weight.dim() == 4 and weight.shape[2:] == (1, 1):
        weight = weight[:, :, 0, 0]
    if tuple(weight.shape) != (CX, CG):
        raise ValueError(f"ops.triton.gated_conv1x1: weight must be (Cx, Cg, 1, 1) or (Cx, Cg) = "
                         f"{(CX, CG)}, got {tuple(weight.shape)}")
    if tuple(bias.shape) != (CX,):
        raise ValueError(f"ops.triton.gated_conv1x1: bias must be (Cx,) = ({CX},), got "
                         f"{tuple(bias.shape)}")
    if g.dtype not in _DTYPES or g.dtype != x.dtype:
        raise TypeError(f"ops.triton.gated_conv1x1: g and x must share one of float32, bfloat16, "
                        f"float16, got {g.dtype} and {x.dtype}")
    if weight.dtype not in _DTYPES or bias.dtype not in _DTYPES:
        raise TypeError(f"ops.triton.gated_conv1x1: weight and bias must be floating, got "
                        f"{weight.dtype} and {bias.dtype}")
    device = check_device("gated_conv1x1", g, weight, bias, x)

    g, x = _flattenable(g), _flattenable(x)
    y = torch.empty_like(x)                     # x's memory format (NCHW or NHWC)
    if _flat(y) is None:
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
    P = H * W
    if y.numel() == 0:
        return y
    if CG == 0:                                 # empty sum: y = bias * x
        return y.copy_(bias.to(x.dtype)[None, :, None, None] * x)

    ieee = g.dtype == torch.float32
    BLOCK_M = min(pad16(CX), 64)
    BLOCK_K = min(pad16(CG), 32 if ieee else 64)
    BLOCK_N = min(pad16(P), 128 if BLOCK_M <= 32 else 64)
    grid = (triton.cdiv(P, BLOCK_N), triton.cdiv(CX, BLOCK_M), B)
    with device_guard(device):
        _gated_conv1x1_kernel[grid](
            g, weight, bias, x, y, CX, CG, P,
            *_flat(g), *weight.stride(), *_flat(x), *_flat(y),
            IEEE=ieee, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
            num_warps=4, num_stages=3,
        )
    return y
