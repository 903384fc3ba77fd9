"""The fast DiffSeg denoiser: a factory over the reference U-Net, inference at t = 0 only.

DiffSeg calls its networks at one timestep, t = 0, so the time embedding and every residual
block's time bias are constants (diffseg.md 13): they are folded into the first convolution's
bias once. The network runs in channels_last: this U-Net is made of 3x3 convolutions on
96-192 channels, which oneDNN runs faster in NHWC (measured, published config, batch 5 at
128 px, 2 threads: reference NCHW 3.58 s, channels_last 3.20 s, the fast network 2.92 s).
GroupNorm + SiLU is the fused `ops.group_norm_silu`, which keeps channels_last on the CPU
(its NHWC loops: 1.1-1.45x torch's channels_last GroupNorm + SiLU per op, the whole network
within noise of it, 2.92-2.99 s against 2.95-3.15 s; an NCHW-only op had made it 3.72 s
through layout copies). On the
CPU (C++ ops built) the 3x3 convolutions run by Winograd F(4x4, 3x3)
(`shared.winograd.enable_winograd`; `winograd=False` saves their transformed weights). The middle
attention, the stems and the downsampling convs are the reference code. Calling the fast
network at another t raises: it was built for t = 0.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ... import ops
from ...ops.winograd import supported as winograd_supported
from ..shared.winograd import WinogradWeight, conv3x3, enable_winograd, resolve_winograd
from .reference import DiffSegUNet, ResidualBlock, Stage, timestep_embedding


class FastResidualBlock(nn.Module):
    """GN+SiLU -> conv1 (time bias folded in) -> GN+SiLU -> conv2, + shortcut."""

    def __init__(self, rb: ResidualBlock, time_emb: torch.Tensor):
        super().__init__()
        gn1, conv1 = rb.conv1[0], rb.conv1[2]
        gn2, conv2 = rb.conv2[0], rb.conv2[3]
        t_bias = rb.time_emb(time_emb)[0]                                  # (Cout,) at t = 0
        self.register_buffer("g1", gn1.weight.detach().clone())
        self.register_buffer("b1", gn1.bias.detach().clone())
        self.register_buffer("w1", conv1.weight.detach().contiguous().clone())
        self.register_buffer("c1", (conv1.bias + t_bias).detach().clone())
        self.register_buffer("g2", gn2.weight.detach().clone())
        self.register_buffer("b2", gn2.bias.detach().clone())
        self.register_buffer("w2", conv2.weight.detach().contiguous().clone())
        self.register_buffer("c2", conv2.bias.detach().clone())
        self.groups, self.eps1, self.eps2 = gn1.num_groups, gn1.eps, gn2.eps
        self.shortcut = copy.deepcopy(rb.shortcut)
        self.wino1: WinogradWeight | None = None
        self.wino2: WinogradWeight | None = None

    def enable_winograd(self) -> bool:
        """Keep both convs' Winograd transforms (when their channels allow it)."""
        if not all(winograd_supported(w.shape[1], w.shape[0]) for w in (self.w1, self.w2)):
            return False
        self.wino1, self.wino2 = WinogradWeight(self.w1), WinogradWeight(self.w2)
        return True

    def forward(self, x, emb=None):
        h = ops.group_norm_silu(x, self.g1, self.b1, self.groups, self.eps1)
        h = conv3x3(h, self.w1, self.c1, self.wino1)
        h = ops.group_norm_silu(h, self.g2, self.b2, self.groups, self.eps2)
        h = conv3x3(h, self.w2, self.c2, self.wino2)
        return h.add_(self.shortcut(x))


class FastDiffSegUNet(nn.Module):
    """The reference U-Net's stages with FastResidualBlocks; forward(x_t, t) with t = 0."""
    family_name = "diffseg"

    def __init__(self, net: DiffSegUNet):
        super().__init__()
        self.config = net.config
        emb = net.time_embed(timestep_embedding(torch.zeros(1, dtype=torch.long),
                                                net.config.model_channels))
        fast = copy.deepcopy(net)
        for stage in (*fast.down_blocks, fast.middle_block, *fast.up_blocks):
            for i, layer in enumerate(stage):
                if isinstance(layer, ResidualBlock):
                    stage[i] = FastResidualBlock(layer, emb)
        self.down_blocks, self.middle_block = fast.down_blocks, fast.middle_block
        self.up_blocks, self.out = fast.up_blocks, fast.out
        self.is_fast = True
        self.to(memory_format=torch.channels_last)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if bool((t != 0).any()):
            raise ValueError("the fast DiffSeg network is built for t = 0 (its time bias is "
                             "folded); use the reference network for other steps")
        skips, h = [], x_t.contiguous(memory_format=torch.channels_last)
        for stage in self.down_blocks:
            h = stage(h, None)
            skips.append(h)
        h = self.middle_block(h, None)
        for stage in self.up_blocks:
            h = stage(torch.cat((h, skips.pop()), dim=1), None)
        return self.out(h).contiguous()


@torch.no_grad()
def build_fast_model(net: DiffSegUNet, winograd: bool | None = None) -> FastDiffSegUNet:
    """`winograd` (default: on the CPU with the C++ ops built) runs the 3x3 convolutions by
    Winograd F(4x4, 3x3)."""
    fast = FastDiffSegUNet(net.eval()).eval()
    # the fast DiffSeg network is always channels_last; after the layout change: u is not an image
    if resolve_winograd(winograd, True, next(net.parameters()).device):
        enable_winograd(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


__all__ = ["build_fast_model", "FastDiffSegUNet", "Stage"]
