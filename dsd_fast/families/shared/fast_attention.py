"""Linear attention for the fast models, reassociated so that most of its matmuls disappear.

Both families' LinearAttention (lucidrains' form) on its normalised input xn (B, C, N):
    q, k, v = W_qkv xn                 three (B, 4 heads, 32, N)        384 C N  MACs
    q = softmax_d(q) / sqrt(32);  k = softmax_n(k)
    ctx[d, e] = sum_n k[d, n] v[e, n]                                  4096 N   MACs
    o[e, n]   = sum_d ctx[d, e] q[d, n]                                4096 N   MACs
    y = Norm(W_out o + b_out)                                           128 C N  MACs
v and W_out enter linearly, so the same y comes from
    kx[d, c]  = sum_n k[d, n] xn[c, n]              (B, 4, 32, C)      128 C N  MACs
    ctx       = kx W_v^T                            (B, 4, 32, 32)     per-sample, tiny
    M[o, h d] = sum_e W_out[o, h e] ctx[h, d, e]    (B, C, 128)        per-sample, tiny
    y = Norm(M q + b_out)                                               128 C N  MACs
with v and the (B, 128, N) output never formed: 512 C N instead of 512 C N + 8192 N MACs,
which halves the cost at the 64 x 64 level of the default model (C = 16). Only rounding
differs from the published order (float32: ~1e-6 relative, checked in
tests/families/test_dermosegdiff_fast.py).

On the CPU the fused C++ op `ops.linear_attention` (csrc/linear_attention.cpp) computes this
order in two sweeps over the pixels (k's softmax and kx with the head's 32 rows along the
vector lanes, read straight from channels_last; q's softmax and M q in panels of pixels),
never writing q or k to memory (4 heads of 32 only: the published layout); `LinearAttentionCore.reassociated` is the same order in PyTorch for other devices,
head layouts, and builds without the extension, its projections as matmuls
over (B, C, N) views: oneDNN's NCHW 1x1 kernel was measured at 11.7 GFLOP/s for the 16 -> 384
projection at 64 x 64 (21.6 ms, batch 5), a matmul of the same size at ~140 GFLOP/s.
"""
from __future__ import annotations

import torch
from torch import nn

from ... import ops


class LinearAttentionCore(nn.Module):
    """W_out attention(xn) + b_out of a LinearAttention, from its matrices, reassociated (see
    above); the families wrap it in their own norms and residual. xn (B, C, H, W)."""

    def __init__(self, w_qkv: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor,
                 heads: int, dim_head: int):
        super().__init__()
        hidden = heads * dim_head
        w_qkv = w_qkv.detach().reshape(3 * hidden, -1)                     # (3 hd, C)
        w_out = w_out.detach().reshape(w_out.shape[0], hidden)             # (Co, hd)
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head ** -0.5
        # q and k as two matmuls so each comes out contiguous (softmax on a strided slice of
        # one 256-channel result copied it first: measured)
        self.register_buffer("w_q", w_qkv[:hidden].contiguous())                # (hd, C)
        self.register_buffer("w_k", w_qkv[hidden:2 * hidden].contiguous())      # (hd, C)
        # W_v per head, transposed for kx @ W_v^T: (heads, C, d)
        self.register_buffer("w_v_t", w_qkv[2 * hidden:].reshape(heads, dim_head, -1)
                             .transpose(1, 2).contiguous())
        # W_out split by head: (heads, C_out, d)
        self.register_buffer("w_out_h", w_out.reshape(w_out.shape[0], heads, dim_head)
                             .transpose(0, 1).contiguous())
        self.register_buffer("b_out", b_out.detach().clone())
        # the fused C++ op (ops.linear_attention) takes the published matrices as they are
        self.register_buffer("w_qkv", w_qkv.contiguous())
        self.register_buffer("w_out", w_out.contiguous())
        self.fused = heads == 4 and dim_head == 32

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        b, c, h, w = xn.shape
        if self.fused and ops._fast(xn, self.w_qkv) and xn.device.type == "cpu":
            return ops.linear_attention(xn, self.w_qkv, self.w_out, self.b_out)
        return self.reassociated(xn.reshape(b, c, h * w)).reshape(b, -1, h, w)

    def reassociated(self, xn: torch.Tensor) -> torch.Tensor:
        """The op's order in plain PyTorch: (B, C, N) -> (B, Co, N)."""
        b, c, n = xn.shape
        heads, d = self.heads, self.dim_head
        co = self.b_out.shape[0]
        q = torch.matmul(self.w_q, xn).reshape(b, heads, d, n).softmax(dim=2)
        k = torch.matmul(self.w_k, xn).softmax(dim=2)                     # (B, hd, N), over n
        # one bmm with a transposed operand: no broadcast copy of xn per head
        kx = torch.bmm(k, xn.transpose(1, 2)).reshape(b, heads, d, c)     # (B, heads, d, C)
        ctx = torch.matmul(kx, self.w_v_t)                                # (B, heads, d, e)
        # M[b, o, h, d] = sum_e W_out[o, h, e] ctx[b, h, d, e]; the 1/sqrt(d) of q folded in
        m = torch.matmul(self.w_out_h.unsqueeze(0), ctx.transpose(2, 3))  # (B, heads, Co, d)
        m = (m * self.scale).permute(0, 2, 1, 3).reshape(b, co, heads * d)
        return torch.baddbmm(self.b_out[None, :, None].expand(b, co, n), m,
                             q.reshape(b, heads * d, n))                   # (B, Co, N)
