"""The reference DermoSegDiff network, exactly as published, plus this project's FF-Parser variant.

    model(x_t, image, t) -> eps_hat
        x_t   (B, 1, H, W)  noisy mask in [-1, 1] space
        image (B, 3, H, W)  RGB in [0, 1] (per-image min-max normalised)
        t     (B,) int64    training step in [0, T-1]

Attribute names mirror the published ones so that `state_dict()` keys are the published
keys; an FF-Parser model adds `encoder_blocks.{i}.0.ff_parser.weight` per level.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from ..shared.layers import Residual, downsample, time_mlp, upsample
from .layers import RB, Attention, FFParser, LAtt, PreNorm

BOTTLENECK_GROUPS = 4   # published: the bottleneck's ResnetBlocks use 4 groups, whatever G is
HEAD_GROUPS = 1         # published: the final ResnetBlock uses GroupNorm(1, .)


class EncoderLevel(nn.Module):
    """Published `EM`: two streams, the image stream gates the noisy-mask stream."""

    def __init__(self, dx: int, dg: int, time_x: int, time_g: int, groups: int,
                 ff_parser_size: int | None):
        super().__init__()
        self.rb_x1 = RB(dx, dx, time_x, groups)
        self.rb_g1 = RB(dg, dg, time_g, groups)
        self.rb_x2 = RB(dx, dx, time_x, groups)
        self.rb_g2 = RB(dg + dx, dg, time_g, groups)
        self.g_feedback = nn.Conv2d(dg, dx, 1)
        self.att_x = LAtt(dx)
        self.att_g = LAtt(dg + dx)
        if ff_parser_size is not None:
            self.ff_parser = FFParser(dx, ff_parser_size)

    def forward(self, x, g, t_x, t_g):
        x = self.rb_x1(x, t_x)
        if hasattr(self, "ff_parser"):
            x = self.ff_parser(x)        # project variant: filter noise features first
        g = self.rb_g1(g, t_g)
        g = torch.cat((x, g), dim=1)
        h = g                            # skip 1: (B, dx+dg, S, S)
        g = self.rb_g2(g, t_g)
        x = self.rb_x2(self.g_feedback(g) * x, t_x)   # noise-feature fusion
        x = self.att_x(x)
        g = torch.cat((x, g), dim=1)
        b = g                            # skip 2: (B, dx+dg, S, S)
        g = self.att_g(g)
        return x, g, h, b


class LinearAndSoftmaxAttention(nn.Module):
    """Published `LSAtt`: Residual(softmax attn)(z) + Residual(linear attn)(z)."""

    def __init__(self, dim: int):
        super().__init__()
        self.s_attn = Residual(PreNorm(dim, Attention(dim)))
        self.l_attn = LAtt(dim)

    def forward(self, z):
        return self.s_attn(z) + self.l_attn(z)


class Bottleneck(nn.Module):
    """Published `BM`."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int):
        super().__init__()
        self.rb_before = RB(dim_in, dim_out, time_dim, BOTTLENECK_GROUPS)
        self.ls_attn = LinearAndSoftmaxAttention(dim_out)
        self.rb_after = RB(2 * dim_out, dim_out, time_dim, BOTTLENECK_GROUPS)

    def forward(self, z, t):
        z = self.rb_before(z, t)
        return self.rb_after(torch.cat((z, self.ls_attn(z)), dim=1), t)


class DecoderLevel(nn.Module):
    """Published `DM`."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int, groups: int):
        super().__init__()
        self.rb_d1 = RB(dim_in, dim_out, time_dim, groups)
        self.rb_d2 = RB(dim_in, dim_out, time_dim, groups)
        self.att_x = LAtt(dim_out)

    def forward(self, x, b, h, t):
        x = self.rb_d1(torch.cat((x, b), dim=1), t)
        x = self.rb_d2(torch.cat((x, h), dim=1), t)
        return self.att_x(x)


class DermoSegDiff(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        dims_x, dims_g, L = c.dims_x, c.dims_g, c.levels
        time_x, time_g = 4 * c.dim_x, 4 * c.dim_g

        self.time_mlp_x = time_mlp(c.dim_x)
        self.time_mlp_g = time_mlp(c.dim_g)
        self.init_conv_x = nn.Conv2d(c.channels_x, c.dim_x, 1)
        self.init_conv_g = nn.Conv2d(c.channels_g, c.dim_g, 1)

        # encoder_blocks[i] = [EncoderLevel, g_down, x_down] (published ModuleList layout)
        self.encoder_blocks = nn.ModuleList()
        for i in range(L):
            dx, dg = dims_x[i], dims_g[i]
            last = i == L - 1
            level = EncoderLevel(dx, dg, time_x, time_g, c.resnet_block_groups,
                                 c.level_size(i) if c.ff_parser else None)
            if last:   # the last level keeps its resolution: plain 3x3 convs
                g_down = nn.Conv2d(dx + dg, dims_g[i + 1], 3, padding=1)
                x_down = nn.Conv2d(dx, dims_x[i + 1], 3, padding=1)
            else:
                g_down = downsample(dx + dg, dims_g[i + 1])
                x_down = downsample(dx, dims_x[i + 1])
            self.encoder_blocks.append(nn.ModuleList([level, g_down, x_down]))

        self.bottleneck = Bottleneck(dims_x[L] + dims_g[L], dims_x[L], time_x)

        # decoder_blocks[j] = [DecoderLevel, d_up], j walks the levels in reverse
        self.decoder_blocks = nn.ModuleList()
        for j in range(L):
            i = L - 1 - j
            dim_in, dim_out = dims_x[i], dims_x[i + 1]
            skip_in = dims_g[i] + dims_x[i]
            dec = DecoderLevel(skip_in + dim_out, dim_out, time_x, c.resnet_block_groups)
            d_up = (nn.Conv2d(dim_out, dim_in, 3, padding=1) if j == L - 1
                    else upsample(dim_out, dim_in))
            self.decoder_blocks.append(nn.ModuleList([dec, d_up]))

        self.final_rb = RB(2 * c.dim_x + c.dim_g, c.dim_x, time_x, HEAD_GROUPS)
        self.final_conv = nn.Conv2d(c.dim_x, c.out_dim, 1)

    def forward(self, x_t: torch.Tensor, image: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = self.init_conv_x(x_t)
        g = self.init_conv_g(image)
        r_x, r_g = x, g
        t_x = self.time_mlp_x(t)
        t_g = self.time_mlp_g(t)

        skips = []
        for level, g_down, x_down in self.encoder_blocks:
            x, g, h, b = level(x, g, t_x, t_g)
            skips.append((h, b))
            g, x = g_down(g), x_down(x)

        x = self.bottleneck(torch.cat((x, g), dim=1), t_x)

        for dec, d_up in self.decoder_blocks:
            h, b = skips.pop()
            x = d_up(dec(x, b, h, t_x))

        x = self.final_rb(torch.cat((x, r_x, r_g), dim=1), t_x)
        return self.final_conv(x)


def build_model(config: ModelConfig) -> DermoSegDiff:
    """The reference network of `config`, with fresh weights. `dsd_fast.segment(images,
    model=build_model(cfg))` works: the family's default schedule and preprocessing apply."""
    return DermoSegDiff(config)
