"""Building blocks of the reference MedSegDiff network (lucidrains' med-seg-diff-pytorch).

Module and attribute names give the package's state-dict keys (../shared/docs/medsegdiff.md
1.2-1.6). Where a block resembles DermoSegDiff's, the differences are the point:
  - Block: a plain 3x3 conv (no weight standardisation) -> GroupNorm -> modulation -> SiLU;
  - LayerNorm over channels (biased variance, eps 1e-5 in float32, 1e-3 otherwise), with
    its gain `g` (1, C, 1, 1) and optional bias `b`, *inside* the attention modules;
  - the FF-Parser is a real map on the full fft2 spectrum (Conditioning below).
This file is reference code: no fused ops, no fast-path imports.
"""
from __future__ import annotations

import torch
from torch import nn

from ..shared.layers import Residual, SpaceToDepth


def layer_norm_eps(dtype: torch.dtype) -> float:
    # The package: 1e-5 for float32 inputs, 1e-3 for anything else (half precision).
    return 1e-5 if dtype == torch.float32 else 1e-3


class ChannelLayerNorm(nn.Module):
    """(x - mean_c) / sqrt(var_c + eps) * g (+ b), statistics over the channel axis only."""

    def __init__(self, dim: int, bias: bool = False):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1)) if bias else None

    def forward(self, x):
        var = x.var(dim=1, unbiased=False, keepdim=True)
        mean = x.mean(dim=1, keepdim=True)
        y = (x - mean) * (var + layer_norm_eps(x.dtype)).rsqrt() * self.g
        return y + self.b if self.b is not None else y


class Block(nn.Module):
    """proj (plain 3x3 conv) -> GroupNorm -> optional x * (scale + 1) + shift -> SiLU."""

    def __init__(self, dim: int, dim_out: int, groups: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    """Two Blocks and a residual; with a time input the first Block is modulated (the
    conditioners' blocks have none: no `mlp` key)."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int | None, groups: int):
        super().__init__()
        self.mlp = (nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
                    if time_emb_dim is not None else None)
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, time_emb=None):
        scale_shift = None
        if self.mlp is not None and time_emb is not None:
            scale_shift = self.mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, heads*d, H, W) -> (B, heads, d, H*W); channel index = head*d + i
    b, c, h, w = t.shape
    return t.reshape(b, heads, c // heads, h * w)


class LinearAttention(nn.Module):
    """LayerNorm (g only) -> q (softmax over channels, then * d^-1/2), k (softmax over pixels)
    -> context = k v^T -> out = context^T q -> 1x1 conv -> LayerNorm (g only)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        hidden = heads * dim_head
        self.prenorm = ChannelLayerNorm(dim)
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(self.prenorm(x)).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """LayerNorm (g only) -> softmax(q k^T / sqrt(d)) v over all pixels -> 1x1 conv."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        hidden = heads * dim_head
        self.prenorm = ChannelLayerNorm(dim)
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(self.prenorm(x)).chunk(3, dim=1))
        attn = torch.einsum("bhdi,bhdj->bhij", q * self.scale, k).softmax(dim=-1)
        out = torch.einsum("bhij,bhdj->bhid", attn, v)              # (B, heads, N, d)
        return self.to_out(out.permute(0, 1, 3, 2).reshape(b, -1, h, w))


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    # keys .0.g (LayerNorm), .1 and .3 (convs); exact GELU between
    return nn.Sequential(ChannelLayerNorm(dim), nn.Conv2d(dim, dim * mult, 1), nn.GELU(),
                         nn.Conv2d(dim * mult, dim, 1))


class Transformer(nn.Module):
    """depth x [Residual(Attention), Residual(FeedForward)]: keys `layers.{k}.{0,1}.fn.*`."""

    def __init__(self, dim: int, depth: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Residual(Attention(dim, heads, dim_head)),
                           Residual(feed_forward(dim))]) for _ in range(depth))

    def forward(self, x):
        for attn, ff in self.layers:
            x = ff(attn(x))
        return x


class DepthToSpace(nn.Module):
    """Inverse of SpaceToDepth by p: (B, C p^2, H, W) -> (B, C, H p, W p)."""

    def __init__(self, p: int):
        super().__init__()
        self.p = p

    def forward(self, x):
        b, cpp, h, w = x.shape
        p = self.p
        x = x.reshape(b, cpp // (p * p), p, p, h, w)
        return x.permute(0, 1, 4, 2, 5, 3).reshape(b, cpp // (p * p), h * p, w * p)


class DynamicMapViT(nn.Module):
    """The dynamic FF-Parser's ViT (medsegdiff.md 1.5): spectra of x and c, interleaved real /
    imag per channel, patched, a Transformer, back to a (B, dim, S, S) map added to the
    learned one. Its output projection is zero-initialised (a new model is not dynamic)."""

    def __init__(self, dim: int, size: int, patch: int, dim_head: int, depth: int):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(dim, size // patch, size // patch))
        self.to_tokens = nn.Sequential(SpaceToDepth(patch),
                                       nn.Conv2d(4 * dim * patch * patch, dim, 1),
                                       ChannelLayerNorm(dim))
        self.transformer = Transformer(dim, depth, heads=4, dim_head=dim_head)
        self.to_patches = nn.Sequential(ChannelLayerNorm(dim),
                                        nn.Conv2d(dim, dim * patch * patch, 1),
                                        DepthToSpace(patch))
        nn.init.zeros_(self.to_patches[1].weight)
        nn.init.zeros_(self.to_patches[1].bias)

    def forward(self, spectra):
        return self.to_patches(self.transformer(self.to_tokens(spectra) + self.pos_emb))


def _real_imag(z: torch.Tensor) -> torch.Tensor:
    # complex (B, C, H, W) -> (B, 2C, H, W), channel 2c + {0: real, 1: imaginary}
    b, c, h, w = z.shape
    return torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(b, 2 * c, h, w)


class Conditioning(nn.Module):
    """The package's per-level conditioner ("FF-Parser" + "dynamic conditional encoding"):

        X   = fft2(x)                  full complex spectrum, default ("backward") norm
        x_f = Re(ifft2(X * A))         A: real (C, S, S) map, initialised to ones
        c   = block(LN_in(x_f) * LN_c(c) * c)
    Only c comes out; x itself goes on unfiltered. `block` is a ResnetBlock without time
    input and with 8 groups whatever the network's groups are.
    """

    def __init__(self, dim: int, size: int, dynamic: bool = False, patch: int = 16,
                 dim_head: int = 32, depth: int = 4):
        super().__init__()
        self.ff_parser_attn_map = nn.Parameter(torch.ones(dim, size, size))
        if dynamic:
            self.to_dynamic_ff_parser_attn_map = DynamicMapViT(dim, size, patch, dim_head,
                                                               depth)
        self.norm_input = ChannelLayerNorm(dim, bias=True)
        self.norm_condition = ChannelLayerNorm(dim, bias=True)
        self.block = ResnetBlock(dim, dim, None, groups=8)

    def forward(self, x, c):
        spec = torch.fft.fft2(x)
        attn_map = self.ff_parser_attn_map
        if hasattr(self, "to_dynamic_ff_parser_attn_map"):
            both = torch.cat((_real_imag(spec), _real_imag(torch.fft.fft2(c))), dim=1)
            attn_map = attn_map + self.to_dynamic_ff_parser_attn_map(both)
        x_f = torch.fft.ifft2(spec * attn_map).real.to(x.dtype)
        c = self.norm_input(x_f) * self.norm_condition(c) * c
        return self.block(c)


def final_downsample(dim_in: int, dim_out: int) -> nn.Conv2d:
    """The last level's "downsample": a 3x3 conv that keeps the resolution."""
    return nn.Conv2d(dim_in, dim_out, 3, padding=1)


__all__ = ["ChannelLayerNorm", "Block", "ResnetBlock", "LinearAttention", "Attention",
           "Transformer", "Conditioning", "final_downsample"]
