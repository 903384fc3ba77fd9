"""Fused residual blocks shared by the families' fast models.

Both families' ResnetBlock is conv3x3 -> GroupNorm -> x * (scale + 1) + shift -> SiLU, twice,
plus a residual; the fast form runs GroupNorm, modulation and SiLU as one op
(`ops.group_norm_silu`). The conv weight is given ready to use: DermoSegDiff passes its
weight-standardised weight (folded once), MedSegDiff its plain weight.

On the CPU the fast models run those 3x3 convolutions by Winograd F(4x4, 3x3)
(`ops.winograd_conv3x3`, `enable_winograd`): 2.0-2.8x oneDNN's direct convolution at the
networks' shapes on one thread (bench/bench_winograd.py), within ~1e-5 of scale.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import winograd


class FusedBlock(nn.Module):
    """conv 3x3 (given weight) -> fused GroupNorm / modulation / SiLU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, norm: nn.GroupNorm):
        super().__init__()
        self.register_buffer("weight", weight.detach().contiguous().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.register_buffer("gamma", norm.weight.detach().clone())
        self.register_buffer("beta", norm.bias.detach().clone())
        self.groups, self.eps = norm.num_groups, norm.eps
        self.register_buffer("wino_u", None, persistent=False)

    def enable_winograd(self) -> bool:
        """Keep the weight's Winograd transform too (4x the weight's memory) and run the conv
        by it for float32 CPU input; False (nothing kept) for channel counts it cannot take."""
        k, c = self.weight.shape[:2]
        if not winograd.supported(c, k):
            return False
        self.wino_u = winograd.winograd_weight(self.weight)
        return True

    def forward(self, x, scale=None, shift=None):
        h = conv3x3(x, self.weight, self.bias, self.wino_u)
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


def use_winograd(u: torch.Tensor | None, x: torch.Tensor) -> bool:
    """Whether a layer holding Winograd weights `u` runs x by them: float32 on the CPU, not
    under autocast (bf16 runs oneDNN's bfloat16 convolution) and not for autograd."""
    return (u is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and x.requires_grad))


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            u: torch.Tensor | None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1), by Winograd when `u` (its transform) is given
    and `use_winograd` says so."""
    if use_winograd(u, x):
        return ops.winograd_conv3x3(x, u, bias)
    return F.conv2d(x, weight, bias, padding=1)


class WinogradConv2d(nn.Conv2d):
    """An nn.Conv2d (3x3, stride 1, padding 1, one group) that also holds its weight's
    Winograd transform (`wino_u`, not in the state dict) and runs float32 CPU input by it.
    Made by `enable_winograd` changing an eligible conv's class: same parameters and keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_winograd(getattr(self, "wino_u", None), x):
            return ops.winograd_conv3x3(x, self.wino_u, self.wino_bias)
        return super().forward(x)


def winograd_eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding in ((1, 1), "same") and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros"
            and winograd.supported(conv.in_channels, conv.out_channels))


@torch.no_grad()
def enable_winograd(model: nn.Module) -> int:
    """Run the 3x3 convolutions of `model` by Winograd F(4x4, 3x3) where their channels allow
    it: every module with an `enable_winograd()` method (FusedBlock, DiffSeg's
    FastResidualBlock), and every eligible nn.Conv2d (turned WinogradConv2d). Their
    transformed weights (4x the weight) are kept beside the plain ones, which autocast,
    autograd and other devices still use. Returns how many layers. Call it after any
    `.to(memory_format=...)` (u is not an image); the op reads and writes NHWC, so this is
    for channels_last CPU models."""
    n = 0
    for m in model.modules():
        if callable(getattr(m, "enable_winograd", None)):
            n += m.enable_winograd()
        elif winograd_eligible(m):
            m.__class__ = WinogradConv2d
            m.register_buffer("wino_u", winograd.winograd_weight(m.weight), persistent=False)
            bias = m.bias if m.bias is not None else m.weight.new_zeros(m.out_channels)
            m.register_buffer("wino_bias", bias.detach().clone(), persistent=False)
            n += 1
    return n


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
