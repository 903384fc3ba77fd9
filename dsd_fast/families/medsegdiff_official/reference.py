"""The official MedSegDiff network, readable and exact: V2 (`UNetModel_newpreview`, the
code's default; medsegdiff.md 2.4, 2.7) and V1 (`UNetModel_v1preview`, 2.6).

    net(x_t, image, t) -> (out (B, 2, S, S), cal (B, 1, S, S))
        x_t    (B, 1, S, S) the noisy mask (the mask space is {0, 1}; x0 clamps to [-1, 1])
        image  (B, C, S, S) in [0, 1], no normalisation
        out    channel 0 the noise estimate, channel 1 the learned-range variance value
        cal    the anchor network's sigmoid mask

The original is called on cat(image, x_t) (the mask last); here the two come separately like
every family's network and are concatenated the same way. Layout (README ISIC flags, 256 px):
input_blocks 0 = conv3x3 4 -> 128, then per level num_res_blocks ResBlocks (+ attention where
the downsample factor is in attention_ds) and a Downsample except at the last level;
middle_block ResBlock, attention, ResBlock; output_blocks per level num_res_blocks + 1
ResBlocks on cat(h, skip) (+ attention), an Upsample after the last of every level but the
top; out GN -> SiLU -> conv3x3 -> 2. V2 adds cat(anchor32, anchor32, anchor64) of the anchor
network (anchor.py) to input_blocks 0's output.
"""
from __future__ import annotations

import torch
from torch import nn

from .anchor import AnchorNet
from .config import OfficialMSDConfig
from .layers import (AttentionBlock, Downsample, GroupNorm32, ResBlock, TimestepSequential,
                     Upsample, timestep_embedding)


class OfficialMedSegDiff(nn.Module):
    """The official V2 network; state-dict keys are the original's."""

    family_name = "medsegdiff-official"

    def __init__(self, config: OfficialMSDConfig, v1_projection_seed: int | None = None):
        super().__init__()
        self.config = c = config
        # V1 adds Conv2d(480, 512, 1)(bottleneck) with weights drawn afresh in every forward
        # (the original's behaviour, from the global CPU generator: "published"), or, with a
        # seed, drawn once from it: deterministic, but not what the published code computes.
        self.v1_projection_seed = v1_projection_seed
        self._projection = None
        mc, emb_dim = c.model_channels, c.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))

        def res(cin, cout, **kw):
            return ResBlock(cin, emb_dim, cout, c.use_scale_shift_norm, **kw)

        def attn(ch):
            return AttentionBlock(ch, c.heads_for(ch), c.use_new_attention_order)

        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(c.in_channels, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in c.attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                chans.append(ch)
            if level != len(c.channel_mult) - 1:
                down = res(ch, ch, down=True) if c.resblock_updown else Downsample(ch)
                self.input_blocks.append(TimestepSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(c.channel_mult))[::-1]:
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in c.attention_ds:
                    layers.append(attn(ch))
                if level and i == c.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if c.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 nn.Conv2d(mc, c.out_channels, 3, padding=1))
        self.hwm = AnchorNet(c.image_channels, highway=c.version == "v1")

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(t, self.config.model_channels))

    def anchors(self, image: torch.Tensor):
        """(the features V2 adds after the first conv (B, 128, S, S), cal): a function of the
        image alone, the same at every step."""
        a32, a64, cal = self.hwm(image)
        return torch.cat((a32, a32, a64), dim=1), cal

    def forward(self, x_t: torch.Tensor, image: torch.Tensor, t: torch.Tensor):
        if self.config.version == "v1":
            return self.forward_v1(x_t, image, t)
        anchor, cal = self.anchors(image)
        return self.unet(x_t, image, t, anchor), cal

    def v1_projection(self) -> nn.Conv2d:
        if self.v1_projection_seed is None:
            return nn.Conv2d(480, 512, 1)           # fresh default-init draws, as published
        if self._projection is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.v1_projection_seed)
                self._projection = nn.Conv2d(480, 512, 1)
        return self._projection

    def forward_v1(self, x_t, image, t):
        """V1 (medsegdiff.md 2.6): the main UNet's input blocks first; the anchor network
        gated by their 4 downsampled maps; its bottleneck, randomly projected to 512
        channels, added before the middle block."""
        emb = self.time_embedding(t)
        h = torch.cat((image, x_t), dim=1)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        bottleneck, cal = self.hwm.highway(image, [hs[3], hs[6], hs[9], hs[12]])
        proj = self.v1_projection().to(bottleneck.device, bottleneck.dtype)
        h = h + proj(bottleneck)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h), cal

    def unet(self, x_t, image, t, anchor) -> torch.Tensor:
        """The main UNet given the anchor features: (B, 2, S, S)."""
        emb = self.time_embedding(t)
        h = torch.cat((image, x_t), dim=1)
        hs = []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb)
            if i == 0:
                h = h + anchor
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def build_official_medsegdiff(config: OfficialMSDConfig | None = None,
                              v1_projection_seed: int | None = None) -> OfficialMedSegDiff:
    return OfficialMedSegDiff(config or OfficialMSDConfig(), v1_projection_seed)
