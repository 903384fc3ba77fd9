"""DermoSegDiff's linear attention block for the fast model: Residual(PreNorm(
LinearAttention)) with its two GroupNorm(1, C), around the reassociated core
(families/shared/fast_attention.py: why and how the matmuls are reordered, and what it costs).
Only rounding differs from the published order (float32: ~1e-6 relative, checked in
tests/families/test_dermosegdiff_fast.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..shared.fast_attention import LinearAttentionCore
from .layers import DIM_HEAD, HEADS, LAtt


class FastLAtt(nn.Module):
    """Residual(PreNorm(LinearAttention)) of a reference `LAtt`, reassociated."""

    def __init__(self, latt: LAtt):
        super().__init__()
        prenorm = latt.att.fn
        attn = prenorm.fn
        conv_out, norm_out = attn.to_out[0], attn.to_out[1]
        self.core = LinearAttentionCore(attn.to_qkv.weight, conv_out.weight, conv_out.bias,
                                        HEADS, DIM_HEAD)
        self.register_buffer("pre_gamma", prenorm.norm.weight.detach().clone())
        self.register_buffer("pre_beta", prenorm.norm.bias.detach().clone())
        self.pre_eps = prenorm.norm.eps
        self.register_buffer("out_gamma", norm_out.weight.detach().clone())
        self.register_buffer("out_beta", norm_out.bias.detach().clone())
        self.out_eps = norm_out.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = F.group_norm(x, 1, self.pre_gamma, self.pre_beta, self.pre_eps)
        y = F.group_norm(self.core(xn), 1, self.out_gamma, self.out_beta, self.out_eps)
        return y.add_(x)

    def _reassociated(self, xn: torch.Tensor) -> torch.Tensor:
        """The core's plain-PyTorch order on (B, C, N) (GPU path, and for tests)."""
        return self.core.reassociated(xn)
