"""The fast official MedSegDiff V2 network (inference only; imports dsd_fast.ops).

What changes against reference.py, each with a reference twin checked in
tests/families/test_medsegdiff_official_fast.py:
  - every ResBlock's GroupNorm -> SiLU (and, with use_scale_shift_norm, the FiLM between
    them) runs as one fused `ops.group_norm_silu`; the time projection is added in place;
  - attention through torch's scaled_dot_product_attention (no (HW)^2 float32 softmax
    copy in Python), the q/k scaling folded into its scale argument;
  - the anchor network is computed once per image by OfficialDenoiser (sampling.py), for
    both backends (V2); here its eval-mode BatchNorms are folded into the preceding convs;
  - V1's FF-Parsers run as the fused `ops.ff_parser`;
  - V2 runs in channels_last (weights and activations): oneDNN's 3x3 convolutions, most of
    this network's time, skip their NCHW <-> blocked reorders in that layout, and every other
    op here keeps it (the fused GroupNorm + SiLU has NHWC loops, on the CPU and in Triton).
    Measured on the CPU at the README's ISIC config, batch 5, 2 threads, side by side in one
    process (docs/PERFORMANCE.md): the UNet forward 1.20x faster at 128 px, 1.28-1.30x at
    256 px; on CUDA the layout is not measured yet (no GPU so far). V1 stays NCHW (its
    FF-Parser op and highway gates take NCHW);
  - V2 on the CPU (C++ ops built): its 3x3 convolutions by Winograd F(4x4, 3x3)
    (`shared.winograd.enable_winograd`; `winograd=False` saves the transformed weights' memory).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops
from ..shared.winograd import enable_winograd, resolve_winograd
from .anchor import ConvUnit, FFParser
from .layers import AttentionBlock, ResBlock
from .reference import OfficialMedSegDiff


class FastResBlock(ResBlock):
    """ResBlock.forward with fused GroupNorm(+FiLM)+SiLU; same parameters, same keys."""

    def forward(self, x, emb):
        n_in, conv_in = self.in_layers[0], self.in_layers[2]
        h = ops.group_norm_silu(x, n_in.weight, n_in.bias, n_in.num_groups, n_in.eps)
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = conv_in(h)
        emb_out = self.emb_layers(emb).type(h.dtype)
        n_out, conv_out = self.out_layers[0], self.out_layers[3]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = ops.group_norm_silu(h, n_out.weight, n_out.bias, n_out.num_groups, n_out.eps,
                                    scale, shift)
        else:
            h = h.add_(emb_out[..., None, None])
            h = ops.group_norm_silu(h, n_out.weight, n_out.bias, n_out.num_groups, n_out.eps)
        h = conv_out(h)
        return h.add_(self.skip_connection(x))


class FastAttentionBlock(AttentionBlock):
    def attention(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        heads = self.num_heads
        ch = width // (3 * heads)
        if self.new_order:
            q, k, v = (u.reshape(bs * heads, ch, length) for u in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), scale=1 / math.sqrt(ch))
        return out.transpose(1, 2).reshape(bs, -1, length)


class FastFFParser(FFParser):
    """V1's FF-Parser through the fused `ops.ff_parser` (its weight is already the half
    spectrum gate as (real, imag), and both transforms are "ortho")."""

    def forward(self, x):
        return ops.ff_parser(x.float().contiguous(), self.complex_weight)


def fold_batchnorms(module: nn.Module) -> None:
    """Fold the anchor network's eval-mode BatchNorms (ConvUnit: conv -> `instnorm` ->
    LeakyReLU) into their convs: w' = w s, b' = (b - mean) s + beta, s = gamma / sqrt(var +
    eps); the BatchNorm becomes Identity."""
    for unit in module.modules():
        if isinstance(unit, ConvUnit) and isinstance(unit.instnorm, nn.BatchNorm2d):
            conv, bn = unit.conv, unit.instnorm
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.data = conv.weight.data * s.view(-1, 1, 1, 1)
            conv.bias.data = (conv.bias.data - bn.running_mean) * s + bn.bias
            unit.instnorm = nn.Identity()


class FastOfficialMedSegDiff(OfficialMedSegDiff):
    """V2 in channels_last: inputs are turned to that layout on the way in, the outputs
    (eps and variance, cal) come back contiguous as the reference returns them."""

    def anchors(self, image: torch.Tensor):
        anchor, cal = super().anchors(image.contiguous(memory_format=torch.channels_last))
        return anchor, cal.contiguous()

    def unet(self, x_t, image, t, anchor) -> torch.Tensor:
        cl = torch.channels_last
        return super().unet(x_t.contiguous(memory_format=cl), image.contiguous(memory_format=cl),
                            t, anchor.contiguous(memory_format=cl)).contiguous()


def build_fast_model(net: OfficialMedSegDiff, channels_last: bool = True,
                     winograd: bool | None = None) -> OfficialMedSegDiff:
    """`channels_last=False` keeps V2 in NCHW (the benchmark's side-by-side). `winograd`
    (default: channels_last V2 on the CPU with the C++ ops built) runs its 3x3 convolutions
    by Winograd F(4x4, 3x3)."""
    channels_last = channels_last and net.config.version == "v2"
    winograd = resolve_winograd(winograd, channels_last, next(net.parameters()).device)
    fast = copy.deepcopy(net).eval()
    if channels_last:
        fast.__class__ = FastOfficialMedSegDiff
    for m in fast.modules():
        if type(m) is ResBlock:
            m.__class__ = FastResBlock          # same parameters and buffers, other forward
        elif type(m) is AttentionBlock:
            m.__class__ = FastAttentionBlock
        elif type(m) is FFParser:
            m.__class__ = FastFFParser
    with torch.no_grad():
        fold_batchnorms(fast.hwm)
    if channels_last:
        fast.to(memory_format=torch.channels_last)    # after folding: the folded weights too
    if winograd:                                      # after .to(): its u is not an image
        enable_winograd(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    fast.is_fast = True
    return fast
