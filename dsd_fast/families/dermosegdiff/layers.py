"""Building blocks of the reference DermoSegDiff network (lucidrains denoising-diffusion style).

Module and attribute names are chosen so that state-dict keys equal the published ones
(see ../shared/docs/dermosegdiff.md section 7): `nn.Sequential` indices included.
This file is the readable oracle: no fused ops, no fast-path imports.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..shared.layers import Residual


def standardize_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per output filter: (w - mean) / sqrt(biased var + eps), over (in, kh, kw)."""
    mean = weight.mean(dim=(1, 2, 3), keepdim=True)
    var = weight.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (weight - mean) * (var + eps).rsqrt()


def ws_eps(dtype: torch.dtype) -> float:
    # Published: 1e-5 for float32 inputs, 1e-3 for anything else (half precision).
    return 1e-5 if dtype == torch.float32 else 1e-3


class WeightStandardizedConv2d(nn.Conv2d):
    """3x3 conv whose stored weight is raw; each forward standardises it first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = standardize_weight(self.weight, ws_eps(x.dtype))
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Block(nn.Module):
    """proj (WS conv 3x3) -> GroupNorm -> optional x * (scale + 1) + shift -> SiLU."""

    def __init__(self, dim: int, dim_out: int, groups: int):
        super().__init__()
        self.proj = WeightStandardizedConv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int):
        super().__init__()
        # mlp.0 is SiLU (no weights), mlp.1 the Linear: key `mlp.1.weight`.
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, time_emb):
        # (B, 2*dim_out) -> two (B, dim_out, 1, 1): first half scale, second half shift.
        scale, shift = self.mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block1(x, (scale, shift))
        h = self.block2(h)
        return h + self.res_conv(x)


class RB(nn.Module):
    """Wrapper that exists only for the published key prefix `<name>.rb.`."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int):
        super().__init__()
        self.rb = ResnetBlock(dim, dim_out, time_emb_dim, groups)

    def forward(self, x, t):
        return self.rb(x, t)


HEADS, DIM_HEAD = 4, 32


def _split_heads(t: torch.Tensor) -> torch.Tensor:
    # (B, heads*dim_head, H, W) -> (B, heads, dim_head, H*W); channel index = head*32 + d
    b, _, h, w = t.shape
    return t.reshape(b, HEADS, DIM_HEAD, h * w)


class Attention(nn.Module):
    """Full softmax self-attention over pixels (bottleneck only)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = HEADS * DIM_HEAD
        self.scale = DIM_HEAD ** -0.5
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (_split_heads(t) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q * self.scale
        sim = torch.einsum("bhdi,bhdj->bhij", q, k)
        # The published code subtracts the row max before softmax; softmax does the same.
        attn = sim.softmax(dim=-1)
        out = torch.einsum("bhij,bhdj->bhid", attn, v)          # (B, heads, N, d)
        out = out.permute(0, 1, 3, 2).reshape(b, HEADS * DIM_HEAD, h, w)
        return self.to_out(out)


class LinearAttention(nn.Module):
    """q softmaxed over its channels, k over pixels; cost linear in pixels."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = HEADS * DIM_HEAD
        self.scale = DIM_HEAD ** -0.5
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.GroupNorm(1, dim))

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (_split_heads(t) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)         # (B, heads, d, e)
        out = torch.einsum("bhde,bhdn->bhen", context, q)       # (B, heads, e, N)
        return self.to_out(out.reshape(b, HEADS * DIM_HEAD, h, w))


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.GroupNorm(1, dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class LAtt(nn.Module):
    """Residual(PreNorm(LinearAttention)); the wrapper gives the key prefix `att.fn.`."""

    def __init__(self, dim: int):
        super().__init__()
        self.att = Residual(PreNorm(dim, LinearAttention(dim)))

    def forward(self, x):
        return self.att(x)


def resize_ff_weight(weight: torch.Tensor, size: int) -> torch.Tensor:
    """An FFParser weight (C, S, S//2+1, 2) for S x S planes -> the same gate for size x size
    planes, frequency by frequency in cycles per plane: an image resized from S to `size`
    keeps its content at the same cycles per plane, so the gate keeps acting on the same
    content. Frequencies the old grid lacks (above its Nyquist) take the nearest old value;
    a smaller grid drops the old highest ones."""
    c, old, half, _ = weight.shape
    if half != old // 2 + 1:
        raise ValueError(f"not an FFParser weight: shape {tuple(weight.shape)}")
    f = torch.fft.fftfreq(size, d=1.0 / size).round().long()       # signed row frequencies
    rows = f.clamp(-(old // 2), old // 2) % old       # +-Nyquist: the old Nyquist row
    cols = torch.arange(size // 2 + 1).clamp(max=old // 2)
    return weight[:, rows][:, :, cols].contiguous()


class FFParser(nn.Module):
    """Learned complex gate in the 2-D Fourier domain (MedSegDiff), per channel and frequency.

        X = rfft2(x, norm="ortho")   # (B, C, H, W//2+1) complex half-spectrum
        y = irfft2(X * w, s=(H, W), norm="ortho")

    `weight` is real with a trailing (real, imag) axis: (C, H, W//2+1, 2). Initialised to the
    identity gate (1 + 0i), so a new model computes exactly what the published one does.
    """

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.size = size
        w = torch.zeros(channels, size, size // 2 + 1, 2)
        w[..., 0] = 1.0
        self.weight = nn.Parameter(w)

    def forward(self, x):
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            raise ValueError(f"FFParser built for {self.size}x{self.size} planes, got {h}x{w}")
        spec = torch.fft.rfft2(x.float(), dim=(-2, -1), norm="ortho")
        spec = spec * torch.view_as_complex(self.weight.float().contiguous())
        return torch.fft.irfft2(spec, s=(h, w), dim=(-2, -1), norm="ortho").to(x.dtype)
