"""Fused residual blocks shared by the families' fast models.

Both families' ResnetBlock is conv3x3 -> GroupNorm -> x * (scale + 1) + shift -> SiLU, twice,
plus a residual; the fast form runs GroupNorm, modulation and SiLU as one op
(`ops.group_norm_silu`). The conv weight is given ready to use: DermoSegDiff passes its
weight-standardised weight (folded once), MedSegDiff its plain weight.

On the CPU the fast models run those 3x3 convolutions by Winograd F(4x4, 3x3)
(winograd_layers.py).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import winograd
from .winograd_layers import WinogradWeight, conv3x3


class FusedBlock(nn.Module):
    """conv 3x3 (given weight) -> fused GroupNorm / modulation / SiLU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, norm: nn.GroupNorm):
        super().__init__()
        self.register_buffer("weight", weight.detach().contiguous().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.register_buffer("gamma", norm.weight.detach().clone())
        self.register_buffer("beta", norm.bias.detach().clone())
        self.groups, self.eps = norm.num_groups, norm.eps
        self.wino: WinogradWeight | None = None

    def enable_winograd(self) -> bool:
        """Keep the weight's Winograd transforms too (winograd_layers.py); False (nothing
        kept) for channel counts the op cannot take."""
        k, c = self.weight.shape[:2]
        if not winograd.supported(c, k):
            return False
        self.wino = WinogradWeight(self.weight)
        return True

    def forward(self, x, scale=None, shift=None):
        h = conv3x3(x, self.weight, self.bias, self.wino)
        return ops.group_norm_silu(h, self.gamma, self.beta, self.groups, self.eps, scale, shift)


class FusedResnetBlock(nn.Module):
    """block2(block1(x, scale, shift)) + res_conv(x); scale, shift = Linear(SiLU(t)) split in
    halves when the block has a time MLP (`mlp`: the reference's nn.Linear, or None)."""

    def __init__(self, mlp: nn.Linear | None, block1: FusedBlock, block2: FusedBlock,
                 res_conv: nn.Module):
        super().__init__()
        self.has_mlp = mlp is not None
        if self.has_mlp:
            self.register_buffer("mlp_weight", mlp.weight.detach().clone())
            self.register_buffer("mlp_bias", mlp.bias.detach().clone())
            self.dim_out = mlp.weight.shape[0] // 2
        self.block1, self.block2 = block1, block2
        self.res_conv = copy.deepcopy(res_conv)

    def forward(self, x, time_emb=None):
        scale = shift = None
        if self.has_mlp and time_emb is not None:
            ss = F.linear(F.silu(time_emb), self.mlp_weight, self.mlp_bias)     # (B, 2 C)
            scale, shift = ss[:, :self.dim_out], ss[:, self.dim_out:]
        h = self.block2(self.block1(x, scale, shift))
        return h.add_(self.res_conv(x))          # h is a fresh tensor: add in place


def is_channels_last(t: torch.Tensor) -> bool:
    """An NHWC tensor that is not also NCHW-contiguous (C = 1 or 1 x 1 planes are both)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
        memory_format=torch.channels_last)


class ChannelsLastOutput(nn.Module):
    """A convolution whose output is channels_last even from a 1-channel input (x_t): such a
    tensor is contiguous in both layouts, so torch keeps its NCHW strides, and the first
    concatenation with it (the head's skip of the stem's output) would come out NCHW."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).contiguous(memory_format=torch.channels_last)
