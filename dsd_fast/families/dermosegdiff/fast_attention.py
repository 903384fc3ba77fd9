"""Linear attention for the fast model, reassociated so that most of its matmuls disappear.

The published LinearAttention (layers.LinearAttention) on PreNorm'd input xn (B, C, N):
    q, k, v = W_qkv xn                 three (B, 4 heads, 32, N)        384 C N  MACs
    q = softmax_d(q) / sqrt(32);  k = softmax_n(k)
    ctx[d, e] = sum_n k[d, n] v[e, n]                                  4096 N   MACs
    o[e, n]   = sum_d ctx[d, e] q[d, n]                                4096 N   MACs
    y = GroupNorm(1, C)(W_out o + b_out)                                128 C N  MACs
v and W_out enter linearly, so the same y comes from
    kx[d, c]  = sum_n k[d, n] xn[c, n]              (B, 4, 32, C)      128 C N  MACs
    ctx       = kx W_v^T                            (B, 4, 32, 32)     per-sample, tiny
    M[o, h d] = sum_e W_out[o, h e] ctx[h, d, e]    (B, C, 128)        per-sample, tiny
    y = GroupNorm(1, C)(M q + b_out)                                    128 C N  MACs
with v and the (B, 128, N) output never formed: 512 C N instead of 512 C N + 8192 N MACs,
which halves the cost at the 64 x 64 level of the default model (C = 16). Only rounding
differs from the published order (float32: ~1e-6 relative, checked in
tests/families/test_dermosegdiff_fast.py).

On the CPU the fused C++ op `ops.linear_attention` (csrc/linear_attention.cpp) computes this
order in 16-pixel panels, never writing q or k to memory; `FastLAtt._reassociated` is the same
order in PyTorch for other devices (and without the extension), its projections as matmuls
over (B, C, N) views: oneDNN's NCHW 1x1 kernel was measured at 11.7 GFLOP/s for the 16 -> 384
projection at 64 x 64 (21.6 ms, batch 5), a matmul of the same size at ~140 GFLOP/s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops
from .layers import DIM_HEAD, HEADS, LAtt


class FastLAtt(nn.Module):
    """Residual(PreNorm(LinearAttention)) of a reference `LAtt`, reassociated (see above)."""

    def __init__(self, latt: LAtt):
        super().__init__()
        prenorm = latt.att.fn
        attn = prenorm.fn
        hidden = HEADS * DIM_HEAD
        w_qkv = attn.to_qkv.weight.detach()[:, :, 0, 0]               # (384, C)
        conv_out, norm_out = attn.to_out[0], attn.to_out[1]
        self.scale = attn.scale
        self.register_buffer("pre_gamma", prenorm.norm.weight.detach().clone())
        self.register_buffer("pre_beta", prenorm.norm.bias.detach().clone())
        self.pre_eps = prenorm.norm.eps
        # q and k as two matmuls so each comes out contiguous (softmax on a strided slice of
        # one 256-channel result copied it first: measured)
        self.register_buffer("w_q", w_qkv[:hidden].contiguous())                # (128, C)
        self.register_buffer("w_k", w_qkv[hidden:2 * hidden].contiguous())      # (128, C)
        # W_v per head, transposed for kx @ W_v^T: (4, C, 32)
        self.register_buffer("w_v_t", w_qkv[2 * hidden:].reshape(HEADS, DIM_HEAD, -1)
                             .transpose(1, 2).contiguous())
        # W_out split by head: (4, C_out, 32)
        w_out = conv_out.weight.detach()[:, :, 0, 0]                          # (C, 128)
        self.register_buffer("w_out_h", w_out.reshape(w_out.shape[0], HEADS, DIM_HEAD)
                             .transpose(0, 1).contiguous())
        self.register_buffer("b_out", conv_out.bias.detach().clone())
        # the fused C++ op (ops.linear_attention) takes the published matrices as they are
        self.register_buffer("w_qkv", w_qkv.contiguous())
        self.register_buffer("w_out", w_out.contiguous())
        self.register_buffer("out_gamma", norm_out.weight.detach().clone())
        self.register_buffer("out_beta", norm_out.bias.detach().clone())
        self.out_eps = norm_out.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        xn = F.group_norm(x, 1, self.pre_gamma, self.pre_beta, self.pre_eps)
        if ops._fast(xn, self.w_qkv) and xn.device.type == "cpu":
            y = ops.linear_attention(xn, self.w_qkv, self.w_out, self.b_out)
        else:
            y = self._reassociated(xn.reshape(b, c, n)).reshape(b, c, h, w)
        y = F.group_norm(y, 1, self.out_gamma, self.out_beta, self.out_eps)
        return y.add_(x)

    def _reassociated(self, xn: torch.Tensor) -> torch.Tensor:
        """The op's order in plain PyTorch (GPU tensors, or no C++ extension): (B, C, N)."""
        b, c, n = xn.shape
        hd = HEADS * DIM_HEAD
        q = torch.matmul(self.w_q, xn).reshape(b, HEADS, DIM_HEAD, n).softmax(dim=2)
        k = torch.matmul(self.w_k, xn).softmax(dim=2)                     # (B, 128, N), over n
        # one bmm with a transposed operand: no broadcast copy of xn per head
        kx = torch.bmm(k, xn.transpose(1, 2)).reshape(b, HEADS, DIM_HEAD, c)   # (B, 4, 32, C)
        ctx = torch.matmul(kx, self.w_v_t)                                # (B, 4, 32 d, 32 e)
        # M[b, o, h, d] = sum_e W_out[o, h, e] ctx[b, h, d, e]; the 1/sqrt(32) of q folded in
        m = torch.matmul(self.w_out_h.unsqueeze(0), ctx.transpose(2, 3))  # (B, 4, C, 32 d)
        m = (m * self.scale).permute(0, 2, 1, 3).reshape(b, c, hd)
        return torch.baddbmm(self.b_out[None, :, None].expand(b, c, n), m,
                             q.reshape(b, hd, n))                          # (B, C, N)
