"""The reference DiffSeg U-Net (own code): the official `UNetModel` (diffseg.md 4), an
image denoiser that predicts the clean image.

    net(x_t, t) -> x0_hat      x_t (B, 3, H, W) noisy image in the model's range, t (B,)
                               int64; H and W multiples of 2^(levels-1)

A trimmed guided-diffusion U-Net: GroupNorm(32) everywhere; residual blocks GN -> SiLU ->
conv, plus a per-channel time bias (additive, no scale/shift), GN -> SiLU -> conv, plus a
shortcut; attention only in the middle (and at `attention_resolutions`), with the legacy
head layout (q, k, v consecutive inside each head's channel group, q and k each scaled by
d^-1/4); stride-2 conv downsampling, nearest + conv upsampling; skips cat(h, skip).
Module names give the official state-dict keys. Reference code: no fast-path imports.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiffSegConfig


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) steps -> (B, dim): [cos(t f), sin(t f)], f_i = exp(-ln(1e4) i / half) (cos first,
    divided by half: not the lucidrains embedding of the other families)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs.to(t.device)[None]
    emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
    return torch.cat((emb, torch.zeros_like(emb[:, :1])), dim=-1) if dim % 2 else emb


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, time_dim: int, groups: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.GroupNorm(groups, cin), nn.SiLU(),
                                   nn.Conv2d(cin, cout, 3, padding=1))
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, cout))
        self.conv2 = nn.Sequential(nn.GroupNorm(groups, cout), nn.SiLU(), nn.Dropout(0.0),
                                   nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(x) + self.time_emb(emb)[:, :, None, None]
        return self.conv2(h) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Self-attention over pixels with the guided-diffusion "legacy" head layout."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        # (B, 3C, N) -> (B*heads, 3C/heads, N): each head's group holds its q, k, v in turn
        q, k, v = self.qkv(self.norm(x)).reshape(b * self.heads, -1, h * w).chunk(3, dim=1)
        scale = (c // self.heads) ** -0.25
        attn = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        out = torch.einsum("bts,bcs->bct", attn, v).reshape(b, c, h, w)
        return self.proj(out) + x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Stage(nn.Sequential):
    """A sequence whose residual blocks also take the time embedding (official
    TimestepEmbedSequential; keys `<stage>.<index>.*`)."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResidualBlock) else layer(x)
        return x


class DiffSegUNet(nn.Module):
    family_name = "diffseg"

    def __init__(self, config: DiffSegConfig):
        super().__init__()
        self.config = c = config
        C, G, temb = c.model_channels, c.groups, 4 * c.model_channels
        self.time_embed = nn.Sequential(nn.Linear(C, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.down_blocks = nn.ModuleList([Stage(nn.Conv2d(c.in_channels, C, 3, padding=1))])
        skips, ch, ds = [C], C, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [ResidualBlock(ch, C * mult, temb, G)]
                ch = C * mult
                if ds in c.attention_resolutions:
                    layers.append(AttentionBlock(ch, c.num_heads, G))
                self.down_blocks.append(Stage(*layers))
                skips.append(ch)
            if level != len(c.channel_mult) - 1:
                self.down_blocks.append(Stage(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = Stage(ResidualBlock(ch, ch, temb, G),
                                  AttentionBlock(ch, c.num_heads, G),
                                  ResidualBlock(ch, ch, temb, G))
        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResidualBlock(ch + skips.pop(), C * mult, temb, G)]
                ch = C * mult
                if ds in c.attention_resolutions:
                    layers.append(AttentionBlock(ch, c.num_heads, G))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.up_blocks.append(Stage(*layers))
        self.out = nn.Sequential(nn.GroupNorm(G, ch), nn.SiLU(),
                                 nn.Conv2d(C, c.out_channels, 3, padding=1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        skips, h = [], x_t
        for stage in self.down_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for stage in self.up_blocks:
            h = stage(torch.cat((h, skips.pop()), dim=1), emb)
        return self.out(h)
