"""The reference MedSegDiff network of lucidrains' `med-seg-diff-pytorch` 0.3.3 (own code).

    net(x_t, image, t, x_self_cond=None) -> the objective's prediction (noise by default)
        x_t    (B, mask_channels, S, S)  noisy mask in [-1, 1] space
        image  (B, input_img_channels, S, S)  image in [0, 1] (no normalisation), S fixed
        t      (B,) int64 in [0, T-1]
        x_self_cond  (B, mask_channels, S, S) the previous x0 estimate (self-conditioned
               models only; zeros when absent, as the package does)
The package's own `Unet.forward(x, time, cond, x_self_cond)` takes the same tensors in
another order. State-dict keys are the package's (medsegdiff.md 1.6), so its state dicts
load strictly.

Layout (medsegdiff.md 1.3): two encoders of the same shape, one for the noisy mask (`downs`)
and one for the image (`cond_downs`); at every level a conditioner filters the mask
features in the Fourier domain and uses them to modulate the image features; the middle
adds the image path to the mask path; one decoder with skips from the mask path (and, with
`skip_connect_condition_fmaps`, the image path).
"""
from __future__ import annotations

import torch
from torch import nn

from ..shared.layers import Residual, downsample, time_mlp, upsample
from .config import MedSegDiffConfig
from .layers import Attention, Conditioning, LinearAttention, ResnetBlock, Transformer


def _encoder_level(c: MedSegDiffConfig, i: int, time_dim: int) -> nn.ModuleList:
    dim_in, dim_out = c.dims[i], c.dims[i + 1]
    attn = Attention if c.full_self_attn[i] else LinearAttention
    last = i == c.levels - 1
    return nn.ModuleList([
        ResnetBlock(dim_in, dim_in, time_dim, c.resnet_block_groups),
        ResnetBlock(dim_in, dim_in, time_dim, c.resnet_block_groups),
        Residual(attn(dim_in, c.attn_heads, c.attn_dim_head)),
        nn.Conv2d(dim_in, dim_out, 3, padding=1) if last else downsample(dim_in, dim_out),
    ])


class MedSegDiffUnet(nn.Module):
    def __init__(self, config: MedSegDiffConfig):
        super().__init__()
        self.config = c = config
        dims, time_dim = c.dims, 4 * c.dim
        in_mask = c.mask_channels * (2 if c.self_condition else 1)
        self.init_conv = nn.Conv2d(in_mask, c.dim, 7, padding=3)
        self.cond_init_conv = nn.Conv2d(c.input_img_channels, c.dim, 7, padding=3)
        self.time_mlp = time_mlp(c.dim)

        self.conditioners = nn.ModuleList(
            Conditioning(dims[i], c.level_size(i), c.dynamic_ff_parser, c.cond_patch_size,
                         c.cond_dim_head, c.cond_depth) for i in range(c.levels))
        self.downs = nn.ModuleList(_encoder_level(c, i, time_dim) for i in range(c.levels))
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_dim, c.resnet_block_groups)
        self.mid_transformer = Transformer(mid, c.mid_transformer_depth, c.attn_heads,
                                           c.attn_dim_head)
        self.mid_block2 = ResnetBlock(mid, mid, time_dim, c.resnet_block_groups)
        # the image path: the same layout with its own weights (the package deep-copies)
        self.cond_downs = nn.ModuleList(_encoder_level(c, i, time_dim) for i in range(c.levels))
        self.cond_mid_block1 = ResnetBlock(mid, mid, time_dim, c.resnet_block_groups)

        self.ups = nn.ModuleList()
        skip_mult = 2 if c.skip_connect_condition_fmaps else 1
        for j, i in enumerate(reversed(range(c.levels))):
            dim_in, dim_out = dims[i], dims[i + 1]
            attn = Attention if c.full_self_attn[i] else LinearAttention
            last = j == c.levels - 1
            self.ups.append(nn.ModuleList([
                ResnetBlock(dim_out + skip_mult * dim_in, dim_out, time_dim, c.resnet_block_groups),
                ResnetBlock(dim_out + skip_mult * dim_in, dim_out, time_dim, c.resnet_block_groups),
                Residual(attn(dim_out, c.attn_heads, c.attn_dim_head)),
                nn.Conv2d(dim_out, dim_in, 3, padding=1) if last else upsample(dim_out, dim_in),
            ]))
        self.final_res_block = ResnetBlock(2 * c.dim, c.dim, time_dim, c.resnet_block_groups)
        self.final_conv = nn.Conv2d(c.dim, c.mask_channels, 1)

    def forward(self, x_t: torch.Tensor, image: torch.Tensor, t: torch.Tensor,
                x_self_cond: torch.Tensor | None = None) -> torch.Tensor:
        c_cfg = self.config
        if c_cfg.self_condition:                         # self-conditioning channels first
            prev = x_self_cond if x_self_cond is not None else torch.zeros_like(x_t)
            x_t = torch.cat((prev, x_t), dim=1)
        x = self.init_conv(x_t)
        r = x
        c = self.cond_init_conv(image)
        temb = self.time_mlp(t)

        skips = []
        for (b1, b2, attn, down), (cb1, cb2, cattn, cdown), cond in zip(
                self.downs, self.cond_downs, self.conditioners):
            x, c = b1(x, temb), cb1(c, temb)
            skips.append((x, c) if c_cfg.skip_connect_condition_fmaps else (x,))
            x, c = attn(b2(x, temb)), cattn(cb2(c, temb))
            c = cond(x, c)                               # x itself goes on unfiltered
            skips.append((x, c) if c_cfg.skip_connect_condition_fmaps else (x,))
            x, c = down(x), cdown(c)

        x = self.mid_block1(x, temb) + self.cond_mid_block1(c, temb)
        x = self.mid_block2(self.mid_transformer(x), temb)

        for b1, b2, attn, up in self.ups:
            x = b1(torch.cat((x, *skips.pop()), dim=1), temb)
            x = b2(torch.cat((x, *skips.pop()), dim=1), temb)
            x = up(attn(x))

        x = self.final_res_block(torch.cat((x, r), dim=1), temb)
        return self.final_conv(x)


def build_medsegdiff(config: MedSegDiffConfig) -> MedSegDiffUnet:
    return MedSegDiffUnet(config)
