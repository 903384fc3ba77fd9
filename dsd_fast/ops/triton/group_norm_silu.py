"""GroupNorm + affine + optional time scale/shift + SiLU, fused (the tail of `Block`).

    x (B, C, H, W), G groups of Cg = C / G channels, P = H * W pixels; per (b, g):
        mean = sum(x) / (Cg P),  var = sum((x - mean)^2) / (Cg P)       (biased, as GroupNorm)
    per element (b, c, p):
        u = (x - mean) * rsqrt(var + eps) * gamma[c] + beta[c]
        u = u * (scale[b, c] + 1) + shift[b, c]                          (if scale/shift given)
        y = u * sigmoid(u)                                               (SiLU)

Layouts: NCHW (contiguous) and NHWC (channels_last). Both are addressed as (b, c, p) with
a pixel stride (1 for NCHW, C for NHWC), so one kernel serves both; Triton specialises
strides equal to 1, which gives each layout coalesced loads along its contiguous axis. The
output keeps x's memory format.

Work split: a group is tiled into (BLOCK_C channels x BLOCK_P pixels) chunks.
  - Small groups (one chunk): a single launch loads the group once, reduces, normalises.
  - Large groups: launch 1 writes each chunk's (count, mean, M2) (exact two-pass statistics
    of the tile in registers); launch 2 combines a group's chunk statistics with Chan's
    formula (M2 = sum M2_i + sum n_i (mean_i - mean)^2, no sum-of-squares cancellation) and
    normalises its chunk. x is read twice, and every (b, g, chunk) is a program, so a
    handful of groups still fills the GPU.
"""
from __future__ import annotations

import torch

from .runtime import check_device, device_guard, require_triton, tl, triton

TILE = 4096          # elements per chunk (16 KiB of float32 in registers per program)
MAX_CHUNKS = 4096    # chunk statistics one program combines (power of two)


@triton.jit
def _gn_tile(x_ptr, b, g, chunk, CG, P, sxb, sxc, sxp, n_cblk,
             BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Load the chunk's (BLOCK_C, BLOCK_P) tile in float32; returns (tile, mask, channels, pixels)."""
    rc = (chunk % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)     # channel within the group
    rp = (chunk // n_cblk) * BLOCK_P + tl.arange(0, BLOCK_P)    # pixel
    mask = (rc[:, None] < CG) & (rp[None, :] < P)
    ch = g * CG + rc
    x = tl.load(x_ptr + b * sxb + ch[:, None] * sxc + rp[None, :] * sxp,
                mask=mask, other=0.0).to(tl.float32)
    return x, mask, ch, rp


@triton.jit
def _gn_stats_kernel(x_ptr, part_ptr, G, CG, P, sxb, sxc, sxp, n_cblk, n_chunks,
                     BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # part: (B*G, n_chunks, 3) float32 = (count, mean, M2) of each chunk
    bg = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    x, mask, _, _ = _gn_tile(x_ptr, bg // G, bg % G, chunk, CG, P, sxb, sxc, sxp, n_cblk,
                             BLOCK_C, BLOCK_P)
    n = tl.sum(tl.sum(mask.to(tl.float32), axis=1), axis=0)
    mean = tl.sum(tl.sum(x, axis=1), axis=0) / n
    d = tl.where(mask, x - mean, 0.0)
    m2 = tl.sum(tl.sum(d * d, axis=1), axis=0)
    base = part_ptr + (bg * n_chunks + chunk) * 3
    tl.store(base, n)
    tl.store(base + 1, mean)
    tl.store(base + 2, m2)


@triton.jit
def _gn_apply_kernel(x_ptr, y_ptr, part_ptr, gamma_ptr, beta_ptr, scale_ptr, shift_ptr,
                     G, CG, P, eps,
                     sxb, sxc, sxp, syb, syc, syp, ssb, ssc, stb, stc,
                     n_cblk, n_chunks,
                     HAS_SCALE: tl.constexpr, SINGLE: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    bg = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    b = bg // G
    g = bg % G
    x, mask, ch, rp = _gn_tile(x_ptr, b, g, chunk, CG, P, sxb, sxc, sxp, n_cblk,
                               BLOCK_C, BLOCK_P)
    if SINGLE:
        # the tile is the whole group: exact two-pass statistics in registers
        n = tl.sum(tl.sum(mask.to(tl.float32), axis=1), axis=0)
        mean = tl.sum(tl.sum(x, axis=1), axis=0) / n
        d = tl.where(mask, x - mean, 0.0)
        var = tl.sum(tl.sum(d * d, axis=1), axis=0) / n
    else:
        # Chan's combination of the group's chunk statistics (see module docstring)
        rn = tl.arange(0, BLOCK_N)
        nmask = rn < n_chunks
        base = part_ptr + (bg * n_chunks + rn) * 3
        cnt = tl.load(base, mask=nmask, other=0.0)
        mu = tl.load(base + 1, mask=nmask, other=0.0)
        m2 = tl.load(base + 2, mask=nmask, other=0.0)
        n = tl.sum(cnt, axis=0)
        mean = tl.sum(cnt * mu, axis=0) / n
        dmu = mu - mean
        var = (tl.sum(m2, axis=0) + tl.sum(cnt * dmu * dmu, axis=0)) / n
    rstd = 1.0 / tl.sqrt_rn(var + eps)       # once per program: take the IEEE-rounded sqrt

    cmask = ch < (g + 1) * CG
    a = tl.load(gamma_ptr + ch, mask=cmask, other=0.0).to(tl.float32) * rstd     # (BLOCK_C,)
    beta = tl.load(beta_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    u = (x - mean) * a[:, None] + beta[:, None]
    if HAS_SCALE:
        s = tl.load(scale_ptr + b * ssb + ch * ssc, mask=cmask, other=0.0).to(tl.float32)
        t = tl.load(shift_ptr + b * stb + ch * stc, mask=cmask, other=0.0).to(tl.float32)
        u = u * (s[:, None] + 1.0) + t[:, None]
    y = u * tl.sigmoid(u)
    tl.store(y_ptr + b * syb + ch[:, None] * syc + rp[None, :] * syp,
             y.to(y_ptr.dtype.element_ty), mask=mask)


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _pixel_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(stride_b, stride_c, stride_p) if the (H, W) pixels flatten to one stride p."""
    sb, sc, sh, sw = t.stride()
    if t.shape[2] == 1 or sh == t.shape[3] * sw:
        return sb, sc, sw
    return None


def _scale_shift_bc(name: str, t: torch.Tensor, B: int, C: int) -> torch.Tensor:
    """(B, C) or (B, C, 1, 1) -> (B, C) view."""
    if t.dim() == 4 and t.shape[2:] == (1, 1):
        t = t[:, :, 0, 0]
    if tuple(t.shape) != (B, C):
        raise ValueError(f"ops.triton.group_norm_silu: {name} must be (B, C) = {(B, C)} or "
                         f"(B, C, 1, 1), got {tuple(t.shape)}")
    return t


def group_norm_silu(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, groups: int,
                    eps: float, scale: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None) -> torch.Tensor:
    """silu(group_norm(x, groups, gamma, beta, eps) * (scale + 1) + shift); x NCHW or NHWC."""
    require_triton("group_norm_silu")
    if x.dim() != 4:
        raise ValueError(f"ops.triton.group_norm_silu: x must be (B, C, H, W), got {tuple(x.shape)}")
    B, C, H, W = x.shape
    if groups < 1 or C % groups:
        raise ValueError(f"ops.triton.group_norm_silu: groups ({groups}) must be >= 1 and divide "
                         f"the channel count ({C})")
    if eps < 0:
        raise ValueError(f"ops.triton.group_norm_silu: eps must be >= 0, got {eps}")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if tuple(t.shape) != (C,):
            raise ValueError(f"ops.triton.group_norm_silu: {name} must be (C,) = ({C},), "
                             f"got {tuple(t.shape)}")
    if (scale is None) != (shift is None):
        raise ValueError("ops.triton.group_norm_silu: give both scale and shift, or neither")
    if scale is not None:
        scale = _scale_shift_bc("scale", scale, B, C)
        shift = _scale_shift_bc("shift", shift, B, C)
    if x.dtype not in _DTYPES:
        raise TypeError(f"ops.triton.group_norm_silu: x must be float32, bfloat16 or float16, "
                        f"got {x.dtype}")
    tensors = [x, gamma, beta] + ([scale, shift] if scale is not None else [])
    device = check_device("group_norm_silu", *tensors)

    # Strides whose (H, W) do not flatten to one pixel stride (e.g. a transposed view): copy.
    if _pixel_strides(x) is None:
        x = x.contiguous()
    y = torch.empty_like(x)           # preserve_format: NHWC in, NHWC out
    if _pixel_strides(y) is None:     # empty_like of an odd-strided (but flattenable) x
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return y

    CG, P = C // groups, H * W
    BLOCK_C = min(triton.next_power_of_2(CG), 64)
    BLOCK_P = max(1, min(triton.next_power_of_2(P), TILE // BLOCK_C))
    n_cblk = triton.cdiv(CG, BLOCK_C)
    while n_cblk * triton.cdiv(P, BLOCK_P) > MAX_CHUNKS:
        BLOCK_P *= 2
    n_chunks = n_cblk * triton.cdiv(P, BLOCK_P)
    single = n_chunks == 1
    grid = (B * groups, n_chunks)
    num_warps = 4 if BLOCK_C * BLOCK_P >= 1024 else 2

    sx = _pixel_strides(x)
    sy = _pixel_strides(y)
    has_scale = scale is not None
    ss = scale.stride() if has_scale else (0, 0)
    st = shift.stride() if has_scale else (0, 0)
    with device_guard(device):
        part = x                          # placeholder pointer, never read when single
        if not single:
            part = torch.empty(B * groups * n_chunks * 3, dtype=torch.float32, device=device)
            _gn_stats_kernel[grid](x, part, groups, CG, P, *sx, n_cblk, n_chunks,
                                   BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, num_warps=num_warps)
        _gn_apply_kernel[grid](
            x, y, part, gamma, beta,
            scale if has_scale else gamma, shift if has_scale else beta,   # unused if not
            groups, CG, P, float(eps),
            *sx, *sy, *ss, *st, n_cblk, n_chunks,
            HAS_SCALE=has_scale, SINGLE=single,
            BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P,
            BLOCK_N=triton.next_power_of_2(n_chunks), num_warps=num_warps,
        )
    return y
