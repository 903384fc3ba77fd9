"""Winograd F(4x4, 3x3) for the 3x3, stride-1, padding-1 convolutions: the transforms, the
weight packing the C++ op reads, and the same algorithm in PyTorch (the op's twin).

    u = winograd_weight(w)                        # once per layer, float64 math
    y = ops.winograd_conv3x3(x, u, bias)          # == F.conv2d(x, w, bias, padding=1)

Each 4 x 4 output tile is A^T [(G w G^T) . (B^T d B)] A of its 6 x 6 input window d: 36
multiply-adds per (input, output channel) instead of 144 (Lavin & Gray 2016). The matrices
below are the Toom-Cook ones for the points 0, 1, -1, 1/2, -2 and infinity, exact in binary
except G's thirds and fifteenths (hence float64 here). Why these points: their largest entry is
8 (A^T's last row) where 0, +-1, +-2 need 8 and 16ths in G; in float32 the convolution's error
is about a third (3.5e-6 against 9.6e-6 of the output's scale at 128 channels, scratch run).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BT", "G", "AT", "PANEL", "winograd_weight", "winograd_weight_bf16", "pack_bf16",
           "winograd_conv3x3_ref", "supported"]

PANEL = 32          # output channels per packed panel (csrc/winograd_conv3x3.cpp)

BT = torch.tensor([[1, -1.5, -2, 1.5, 1, 0],
                   [0, -1, 0.5, 2.5, 1, 0],
                   [0, 1, -2.5, 0.5, 1, 0],
                   [0, -2, -1, 2, 1, 0],
                   [0, 0.5, -1, -0.5, 1, 0],
                   [0, 1, -1.5, -2, 1.5, 1]], dtype=torch.float64)
G = torch.tensor([[1, 0, 0],
                  [1 / 3, 1 / 3, 1 / 3],
                  [-1 / 3, 1 / 3, -1 / 3],
                  [-16 / 15, -8 / 15, -4 / 15],
                  [1 / 15, -2 / 15, 4 / 15],
                  [0, 0, 1]], dtype=torch.float64)
AT = torch.tensor([[1, 1, 1, 1, 1, 0],
                   [0, 1, -1, 0.5, -2, 0],
                   [0, 1, 1, 0.25, 4, 0],
                   [0, 1, -1, 0.125, -8, 1]], dtype=torch.float64)


def supported(in_channels: int, out_channels: int) -> bool:
    """Channel counts the C++ op takes (whole vectors in every build)."""
    return in_channels % 16 == 0 and out_channels % 16 == 0 and in_channels > 0 < out_channels


# G = diag(1 / G_DEN) G_NUM: integer rows over their denominators. G w G^T is computed as
# (G_NUM w G_NUM^T) / (G_DEN_i G_DEN_j): for float32 weights the numerator (products with
# integers up to 16, sums of 3) is exact in float64 unless a kernel's nonzero weights span more
# than ~2^16 in magnitude (then it is off by a float64 rounding, U by at most a float32 ulp),
# and the one division is correctly rounded, so U is G w G^T rounded once to the nearest
# float32 whatever order the matmuls sum in. Products with a float64 G (its thirds and
# fifteenths inexact) put about 0.2 % of random kernels' entries, exact ties between two
# float32s (numerator divisible by the denominator), on either side depending on that order.
G_NUM = torch.tensor([[1, 0, 0], [1, 1, 1], [-1, 1, -1], [-16, -8, -4], [1, -2, 4], [0, 0, 1]],
                     dtype=torch.float64)
G_DEN = torch.tensor([1, 3, 3, 15, 15, 1], dtype=torch.float64)
_CHUNK_BYTES = 1 << 21      # float64 temporaries per step: cache-sized, not layer-sized


def winograd_weight(w: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) conv weight -> u (ceil(K / 32), 36, C, 32) float32: U = G w G^T per
    (output, input) channel (float64 math, rounded once), position xi = 6 i + j, output
    channels in panels of 32 (zero-padded), the layout csrc/winograd_conv3x3.cpp reads in
    every build. Computed panel by panel, a slice of input channels at a time, as two
    matmuls over all the slice's kernels at once, written straight into u's layout."""
    if w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weight: a (K, C, 3, 3) weight expected, got {tuple(w.shape)}")
    k, c = w.shape[:2]
    panels = -(-k // PANEL)
    dev = w.device
    g = G_NUM.to(dev)
    den = torch.outer(G_DEN, G_DEN).reshape(36, 1).to(dev)
    w = w.detach()
    u = torch.empty(panels, 36, c, PANEL, dtype=torch.float32, device=dev)
    step = max(1, min(c, _CHUNK_BYTES // (36 * PANEL * 8)))
    for p in range(panels):
        k0, k1 = p * PANEL, min(k, (p + 1) * PANEL)
        for c0 in range(0, c, step):
            c1 = min(c, c0 + step)
            # (3a, 3b, C', 32): the panel's output channels innermost, as u has them
            wp = torch.zeros(3, 3, c1 - c0, PANEL, dtype=torch.float64, device=dev)
            wp[..., :k1 - k0] = w[k0:k1, c0:c1].permute(2, 3, 1, 0)
            t = torch.matmul(g, wp.view(3, -1)).view(6, 3, -1)     # (6i, 3b, C' 32): G_NUM w
            num = torch.matmul(g, t).view(36, -1)                   # (6i 6j, C' 32): ... G_NUM^T
            u[p, :, c0:c1] = num.div_(den).view(36, c1 - c0, PANEL)
    return u


def winograd_weight_bf16(w: torch.Tensor) -> torch.Tensor:
    """winograd_weight(w) rounded to bfloat16, input channels paired innermost as AVX-512
    BF16's dot product reads them: (ceil(K / 32), 36, C / 2, 32, 2)."""
    return pack_bf16(winograd_weight(w))


def pack_bf16(u: torch.Tensor) -> torch.Tensor:
    """winograd_weight's u in winograd_weight_bf16's layout and precision."""
    p, _, c, _ = u.shape
    return u.reshape(p, 36, c // 2, 2, PANEL).transpose(3, 4).to(torch.bfloat16).contiguous()


def unpack_bf16(u16: torch.Tensor) -> torch.Tensor:
    """winograd_weight_bf16's layout back to winograd_weight's (values stay bf16-rounded)."""
    p, _, c2, _, _ = u16.shape
    return u16.float().transpose(3, 4).reshape(p, 36, 2 * c2, PANEL)


def winograd_conv3x3_ref(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor,
                         round_v_bf16: bool = False) -> torch.Tensor:
    """The op's algorithm in PyTorch (unfold, einsums), in x's dtype: the twin the C++ kernel
    is checked against beside F.conv2d, and the fallback. Output NCHW-contiguous. With a
    bfloat16 u (winograd_weight_bf16) and round_v_bf16, the bfloat16 op's arithmetic:
    V and U rounded to bfloat16, everything else float32."""
    if u.dim() == 5:
        u = unpack_bf16(u)
    b, c, h, w = x.shape
    k = bias.numel()
    th, tw = -(-h // 4), -(-w // 4)
    xp = F.pad(x, (1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))
    d = xp.unfold(2, 6, 4).unfold(3, 6, 4)                         # (B, C, th, tw, 6, 6)
    bt, at = BT.to(x), AT.to(x)
    v = torch.einsum("ij,bcpqjl,ml->imbpqc", bt, d, bt)           # (6, 6, B, th, tw, C)
    if round_v_bf16:
        v = v.to(torch.bfloat16).to(v.dtype)
    uu = u.permute(1, 2, 0, 3).reshape(6, 6, c, -1)[..., :k].to(x)  # (6, 6, C, K)
    m = torch.einsum("ijbpqc,ijck->ijbpqk", v, uu)
    y = torch.einsum("ai,ijbpqk,nj->bkpaqn", at, m, at)              # (B, K, th, 4, tw, 4)
    y = y.reshape(b, k, 4 * th, 4 * tw)[:, :, :h, :w]
    return (y + bias.to(x).reshape(1, k, 1, 1)).contiguous()
