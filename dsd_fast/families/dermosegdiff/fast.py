"""The fast model: a factory over the reference model, not a fork of it.

`build_fast_model(model)` returns an inference-only copy of a reference DermoSegDiff with
  * weight standardisation folded once: every Block holds w' = (w - mean) / sqrt(var + eps)
    as a plain conv weight (the raw weights are not kept);
  * GroupNorm + time scale/shift + SiLU as one fused op (`ops.group_norm_silu`);
  * the noise-feature fusion g_feedback(g) * x as one op (`ops.gated_conv1x1`);
  * the FF-Parser written straight into its slice of the encoder's concatenation buffer
    (`ops.ff_parser(..., out=h[:, :dx])`), so cat(x, g) copies only g;
  * the encoder's skip buffers h and b allocated once per (batch, size) and reused;
  * linear attention reassociated so v and its 128-channel output are never formed
    (`fast_attention.FastLAtt`), its 1x1 convolutions as matmuls;
  * space-to-depth + 1x1 conv as one 2x2 stride-2 conv, nearest x2 + 3x3 conv as four 2x2
    phase convs (`fast_resample`);
  * on the CPU, weights and activations in channels_last (NHWC): oneDNN's convolutions skip
    their NCHW reorders, and the fused GroupNorm + SiLU and linear attention ops read and
    write NHWC themselves (`bench/bench_denoiser.py --layouts 3`, side by side, 2 threads:
    isic2018 1.14x, the default config 1.07-1.11x, w32 1.08x over the NCHW fast model;
    segment() with the bundled model 1.01-1.04x end to end). The FF-Parser op filters
    whole planes, so it gets an NCHW copy of x (the level's smallest tensor). CUDA keeps NCHW
    (not measured there).
  * on the CPU (channels_last, C++ ops built), the ResnetBlocks' 3x3 convolutions by
    Winograd F(4x4, 3x3) (`ops.winograd_conv3x3`), their transformed weights kept beside the
    plain ones (5x those weights' memory; `winograd=False` saves it).
  * on the CPU, the time MLPs' outputs and the blocks' scale/shift remembered per timestep
    (`fast_blocks.MemoTimeMLP`): a sampler reuses the same few timesteps for every image.
Everything else (softmax attention) is the reference code.
The reference model is not modified. The ops fall back to their pure-PyTorch twins when
the C++ extension is not built, so the fast model always runs; `ops.AVAILABLE` says which.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops
from ..shared.fast_blocks import (ChannelsLastOutput, FusedBlock, FusedResnetBlock, is_channels_last,
                           memoize_time_mlps)
from ..shared.fast_resample import (FastDownsample, FastUpsample, is_published_downsample,
                             is_published_upsample)
from ..shared.winograd import enable_winograd, resolve_winograd
from .fast_attention import FastLAtt
from .layers import RB, Block, LAtt, ResnetBlock, standardize_weight, ws_eps
from .reference import DermoSegDiff, EncoderLevel


def fold_block(block: Block) -> FusedBlock:
    """Block with its weight standardisation folded: w' = (w - mean) / sqrt(var + eps), once."""
    w = standardize_weight(block.proj.weight.detach(), ws_eps(torch.float32))
    return FusedBlock(w, block.proj.bias, block.norm)


def fast_resnet_block(rb: ResnetBlock) -> FusedResnetBlock:
    return FusedResnetBlock(rb.mlp[1], fold_block(rb.block1), fold_block(rb.block2),
                            rb.res_conv)


class FastEncoderLevel(nn.Module):
    """The published encoder level with the fused FF-Parser and noise-feature fusion."""

    def __init__(self, level: EncoderLevel):
        super().__init__()
        self.rb_x1, self.rb_g1 = level.rb_x1, level.rb_g1
        self.rb_x2, self.rb_g2 = level.rb_x2, level.rb_g2
        self.att_x, self.att_g = level.att_x, level.att_g
        self.register_buffer("fb_weight", level.g_feedback.weight.detach().clone())
        self.register_buffer("fb_bias", level.g_feedback.bias.detach().clone())
        ff = getattr(level, "ff_parser", None)
        self.register_buffer("ff_weight", None if ff is None else ff.weight.detach().clone())
        self._buffers_for: tuple | None = None

    def _skip_buffers(self, x, g):
        # h = cat(x, g) and b = cat(x, g') live until the decoder uses them; one pair per
        # (batch, size, dtype), reused by every forward (skips are consumed within a forward).
        b_, dx, s, _ = x.shape
        key = (b_, dx + g.shape[1], s, x.dtype, x.device)
        if self._buffers_for != key:
            self.h_buf = torch.empty(b_, dx + g.shape[1], s, s, dtype=x.dtype, device=x.device)
            self.b_buf = torch.empty_like(self.h_buf)
            self._buffers_for = key
        return self.h_buf, self.b_buf

    def forward(self, x, g, t_x, t_g):
        x = self.rb_x1(x, t_x)
        g = self.rb_g1(g, t_g)
        if is_channels_last(x):
            return self._forward_channels_last(x, g, t_x, t_g)
        h, b = self._skip_buffers(x, g)
        dx = x.shape[1]
        if self.ff_weight is not None:
            ops.ff_parser(x, self.ff_weight, out=h[:, :dx])      # filtered x lands in h
        else:
            h[:, :dx].copy_(x)
        h[:, dx:].copy_(g)
        x = h[:, :dx]
        g = self.rb_g2(h, t_g)
        x = self.rb_x2(ops.gated_conv1x1(g, self.fb_weight, self.fb_bias, x), t_x)
        x = self.att_x(x)
        b[:, :dx].copy_(x)
        b[:, dx:].copy_(g)
        g = self.att_g(b)
        return x, g, h, b

    def _forward_channels_last(self, x, g, t_x, t_g):
        # A channel slice of an NHWC buffer is not an NHWC tensor (oneDNN would copy it), so
        # no shared skip buffers here: the concatenations are torch.cat's. The FF-Parser op
        # filters whole planes: it gets an NCHW copy of x (dx channels, the level's smallest).
        if self.ff_weight is not None:
            x = ops.ff_parser(x.contiguous(), self.ff_weight).contiguous(
                memory_format=torch.channels_last)
        h = torch.cat((x, g), dim=1)
        g = self.rb_g2(h, t_g)
        x = self.rb_x2(F.conv2d(g, self.fb_weight, self.fb_bias).mul_(x), t_x)
        x = self.att_x(x)
        b = torch.cat((x, g), dim=1)
        g = self.att_g(b)
        return x, g, h, b


class ChannelsLastDermoSegDiff(DermoSegDiff):
    """The fast model in channels_last (weights and activations): inputs are turned to that
    layout on the way in, eps comes back contiguous as the reference returns it."""

    def forward(self, x_t: torch.Tensor, image: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cl = torch.channels_last
        return super().forward(x_t.contiguous(memory_format=cl),
                               image.contiguous(memory_format=cl), t).contiguous()


@torch.no_grad()
def build_fast_model(model: DermoSegDiff, channels_last: bool | None = None,
                     winograd: bool | None = None) -> DermoSegDiff:
    """Inference-only fast copy of a reference model (float32). The reference is untouched.
    `channels_last` (default: on the CPU, where it was measured faster; NCHW elsewhere) runs
    weights and activations in NHWC. `winograd` (default: with channels_last when the C++
    ops are built) runs the 3x3 convolutions of the ResnetBlocks by Winograd F(4x4, 3x3)."""
    device = next(model.parameters()).device
    if channels_last is None:
        channels_last = device.type == "cpu"
    winograd = resolve_winograd(winograd, channels_last, device)
    fast = copy.deepcopy(model).eval()
    for mod in fast.modules():
        if isinstance(mod, RB) and isinstance(mod.rb, ResnetBlock):
            mod.rb = fast_resnet_block(mod.rb)
    for parent in list(fast.modules()):
        for name, child in parent.named_children():
            if isinstance(child, LAtt):
                setattr(parent, name, FastLAtt(child))
    for blocks in fast.encoder_blocks:
        blocks[0] = FastEncoderLevel(blocks[0])
        for k in (1, 2):
            if is_published_downsample(blocks[k]):
                blocks[k] = FastDownsample(blocks[k])
    for blocks in fast.decoder_blocks:
        if is_published_upsample(blocks[1]):
            blocks[1] = FastUpsample(blocks[1])
    if channels_last:
        fast.__class__ = ChannelsLastDermoSegDiff
        fast.init_conv_x = ChannelsLastOutput(fast.init_conv_x)
        fast.to(memory_format=torch.channels_last)       # after folding: the folded weights too
        for level in fast.encoder_blocks:                # the FF-Parser gates are not images
            if level[0].ff_weight is not None:
                level[0].ff_weight = level[0].ff_weight.contiguous()
    if winograd:                                         # after .to(): its u is not an image
        enable_winograd(fast)
    memoize_time_mlps(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    fast.is_fast = True
    return fast
