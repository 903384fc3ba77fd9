"""The guided-diffusion blocks of the official MedSegDiff UNet (medsegdiff.md 2.3).

Attribute names and Sequential indices are the original's, so its state dicts load strictly:
ResBlock `in_layers.{0,2}`, `emb_layers.1`, `out_layers.{0,3}`, `skip_connection`;
AttentionBlock `norm`, `qkv`, `proj_out` (Conv1d); Downsample `op`; Upsample `conv`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5) computed in float32, returned in the input's dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """guided-diffusion's sinusoidal embedding: frequencies exp(-ln(max_period) i / half)
    (denominator half, not half - 1), cos first then sin; a zero column for odd dims."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepSequential(nn.Sequential):
    """Children that take the time embedding get it (ResBlocks); the rest get x only."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (`conv`) when conv_resample (the code's default)."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """3x3 conv stride 2 (`op`) when conv_resample, else 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3, + Linear(SiLU(emb)) (or FiLM on the second GN with
    use_scale_shift_norm), GN -> SiLU -> (dropout) -> conv3x3, + skip(x). With up/down the
    resampling (no conv) sits between the first SiLU and conv, and on the skip path."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1) * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """x + proj_out(attention(qkv(GN(x)))) over the flattened pixels. qkv and proj_out are
    Conv1d (weights (3C, C, 1), (C, C, 1)). The legacy order (use_new_attention_order False)
    splits heads before q/k/v; q and k are each scaled by ch^-1/4; softmax in float32."""

    def __init__(self, channels: int, num_heads: int, new_order: bool = False):
        super().__init__()
        self.num_heads, self.new_order = num_heads, new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        h = self.proj_out(self.attention(qkv))
        return (x + h).reshape(b, c, *spatial)

    def attention(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        heads = self.num_heads
        ch = width // (3 * heads)
        scale = 1 / math.sqrt(math.sqrt(ch))
        if self.new_order:
            q, k, v = qkv.chunk(3, dim=1)
            q = (q * scale).reshape(bs * heads, ch, length)
            k = (k * scale).reshape(bs * heads, ch, length)
            v = v.reshape(bs * heads, ch, length)
        else:
            q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
            q, k = q * scale, k * scale
        weight = torch.einsum("bct,bcs->bts", q, k)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
