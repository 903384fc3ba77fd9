"""Building blocks that several families' networks share, with the key layout the
original codes give them (both come from lucidrains' denoising-diffusion-pytorch):

    Residual(fn)              fn(x) + x; key prefix `fn.`
    downsample(dim, dim_out)  space-to-depth by 2 (channel c*4 + row*2 + col), 1x1 conv at `.1`
    upsample(dim, dim_out)    nearest x2, 3x3 conv at `.1`
    time_mlp(dim)             sinusoidal (sin first, f_i = exp(-i ln(1e4)/(half-1))), Linear,
                              exact GELU, Linear: weights at `.1` and `.3`
This file is reference code: no fused ops, no fast-path imports.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class SpaceToDepth(nn.Module):
    """(B, C, pH', pW') -> (B, p^2 C, H', W'), new channel = c p^2 + row_offset p + col_offset
    (einops 'b c (h p1) (w p2) -> b (c p1 p2) h w'); p = 2 in both down-samplings."""

    def __init__(self, p: int = 2):
        super().__init__()
        self.p = p

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.p
        x = x.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h // p, w // p)


def downsample(dim: int, dim_out: int) -> nn.Sequential:
    # Index 1 holds the conv: published key `<...>.1.weight`.
    return nn.Sequential(SpaceToDepth(), nn.Conv2d(dim * 4, dim_out, 1))


def upsample(dim: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(dim, dim_out, 3, padding=1))


class SinusoidalEmbedding(nn.Module):
    """t (B,) integer steps -> (B, dim): [sin(t f), cos(t f)], f_i = exp(-i ln(1e4)/(half-1))."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        args = t[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


def time_mlp(dim: int) -> nn.Sequential:
    # Indices 1 and 3 hold weights: keys `time_mlp_x.1.*`, `time_mlp_x.3.*`.
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                         nn.Linear(4 * dim, 4 * dim))
