"""The fast MedSegDiff model: a factory over the reference network, not a fork of it.

`build_fast_model(net)` returns an inference-only copy with
  * every ResnetBlock's GroupNorm + time scale/shift + SiLU as one op (`ops.group_norm_silu`);
  * the FF-Parser through the fused half-spectrum op `ops.ff_parser` (C++ on the CPU,
    Triton on CUDA). The package filters with a real map A on the full fft2 spectrum and
    keeps the real part; since A is real but not Hermitian-symmetric, the same result comes
    from the half spectrum with the symmetrised map
        A_s[u, v] = (A[u, v] + A[-u mod H, -v mod W]) / 2,  gate = (A_s[:, :W/2+1], 0)
    (the real part of a spectrum's inverse only sees its Hermitian part), and any matched
    norm pair gives the same filter, so the op's ortho pair serves (medsegdiff.md 1.4;
    checked against the package in tests/families/test_medsegdiff_parity.py). The dynamic
    variant's per-sample map keeps the reference path;
  * linear attention reassociated (`families.shared.fast_attention`, the fused C++ op for the
    default 4 x 32 heads) between the channel LayerNorms;
  * space-to-depth + 1x1 conv and nearest x2 + 3x3 conv as cheaper convolutions
    (`families.shared.fast_resample`);
  * on the CPU, weights and activations in channels_last (NHWC), every channel LayerNorm as
    F.layer_norm over the NHWC view's contiguous channel axis (FastChannelLayerNorm); the
    FF-Parser op gets an NCHW copy (it filters whole planes). The bundled model's forward
    (64 px, batch 5, 2 threads, side by side) 1.51-1.58x the NCHW fast model; CUDA keeps
    NCHW (not measured there);
  * on the CPU (channels_last, C++ ops built), the ResnetBlocks' 3x3 convolutions by
    Winograd F(4x4, 3x3) (`ops.winograd_conv3x3`; `winograd=False` saves its weight copies);
  * on the CPU, the time MLP's output and the blocks' scale/shift remembered per timestep
    (`fast_blocks.MemoTimeMLP`).
Everything else (full attention, the mid transformer, 7x7 stems) is the reference
code. The reference network is not modified; the ops fall back to their twins when no
kernel can take the inputs, so the fast model always runs.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops
from ..shared.layers import Residual
from ..shared.fast_attention import LinearAttentionCore
from ..shared.fast_blocks import (ChannelsLastOutput, FusedBlock, FusedResnetBlock, is_channels_last,
                           memoize_time_mlps)
from ..shared.fast_resample import (FastDownsample, FastUpsample, is_published_downsample,
                             is_published_upsample)
from ..shared.winograd import enable_winograd, resolve_winograd
from .layers import (ChannelLayerNorm, Conditioning, LinearAttention, ResnetBlock,
                     layer_norm_eps)
from .reference import MedSegDiffUnet


def half_spectrum_gate(attn_map: torch.Tensor) -> torch.Tensor:
    """Real full-spectrum map A (C, H, W) -> the complex half-spectrum gate (C, H, W//2+1, 2)
    that `ops.ff_parser` applies, equal in effect to Re(ifft2(fft2(x) * A))."""
    a = attn_map.detach().double()
    mirrored = torch.roll(torch.flip(a, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    sym = (a + mirrored) / 2                             # A_s[u, v] = (A[u,v] + A[-u,-v]) / 2
    half = sym[..., : a.shape[-1] // 2 + 1]
    return torch.stack((half, torch.zeros_like(half)), dim=-1).float().contiguous()


def fast_resnet_block(rb: ResnetBlock) -> FusedResnetBlock:
    blocks = [FusedBlock(b.proj.weight, b.proj.bias, b.norm) for b in (rb.block1, rb.block2)]
    return FusedResnetBlock(rb.mlp[1] if rb.mlp is not None else None, *blocks, rb.res_conv)


class FastLinearAttention(nn.Module):
    """The package's LinearAttention: channel LayerNorm -> reassociated core -> channel
    LayerNorm (g only). Its Residual wrapper stays outside, as in the reference."""

    def __init__(self, attn: LinearAttention):
        super().__init__()
        self.prenorm = copy.deepcopy(attn.prenorm)
        conv_out = attn.to_out[0]
        hidden = conv_out.weight.shape[1]
        self.core = LinearAttentionCore(attn.to_qkv.weight, conv_out.weight, conv_out.bias,
                                        attn.heads, hidden // attn.heads)
        self.out_norm: ChannelLayerNorm = copy.deepcopy(attn.to_out[1])

    def forward(self, x):
        return self.out_norm(self.core(self.prenorm(x)))


class FastChannelLayerNorm(ChannelLayerNorm):
    """ChannelLayerNorm (same parameters) that, on channels_last input, is F.layer_norm over
    the contiguous channel axis of the NHWC view: one fused pass instead of var, mean and
    three elementwise passes (var alone was 30% of the channels_last forward, profiled).
    NCHW input takes the reference formula, and so does bfloat16 autocast: F.layer_norm runs
    in bfloat16 there, where the reference's float32 gain keeps the rest of the network in
    float32 (measured: 6x the reference's bf16 error on a small model, tests/test_precision.py)."""

    def forward(self, x):
        if not is_channels_last(x) or x.dtype != torch.float32 \
                or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        c = x.shape[1]
        y = F.layer_norm(x.permute(0, 2, 3, 1), (c,), self.g.reshape(c),
                         None if self.b is None else self.b.reshape(c),
                         layer_norm_eps(x.dtype))
        return y.permute(0, 3, 1, 2)                 # an NHWC tensor again, no copy


class FastConditioning(nn.Module):
    """Conditioning with the fused FF-Parser (module docstring) and fused ResnetBlock."""

    def __init__(self, cond: Conditioning):
        super().__init__()
        self.register_buffer("gate", half_spectrum_gate(cond.ff_parser_attn_map))
        self.norm_input = copy.deepcopy(cond.norm_input)
        self.norm_condition = copy.deepcopy(cond.norm_condition)
        self.block = fast_resnet_block(cond.block)

    def forward(self, x, c):
        x_f = ops.ff_parser(x.float().contiguous(), self.gate).to(x.dtype)
        if is_channels_last(c):              # the op filters whole planes: NCHW in and out
            x_f = x_f.contiguous(memory_format=torch.channels_last)
        c = self.norm_input(x_f) * self.norm_condition(c) * c
        return self.block(c)


class ChannelsLastMedSegDiffUnet(MedSegDiffUnet):
    """The fast network in channels_last: inputs turned to that layout on the way in, the
    prediction returned contiguous as the reference returns it."""

    def forward(self, x_t, image, t, x_self_cond=None):
        cl = torch.channels_last
        if x_self_cond is not None:
            x_self_cond = x_self_cond.contiguous(memory_format=cl)
        return super().forward(x_t.contiguous(memory_format=cl),
                               image.contiguous(memory_format=cl), t, x_self_cond).contiguous()


@torch.no_grad()
def build_fast_model(net: MedSegDiffUnet, channels_last: bool | None = None,
                     winograd: bool | None = None) -> MedSegDiffUnet:
    """Inference-only fast copy of a reference network (float32). The reference is untouched.
    `channels_last` (default: on the CPU, measured faster there; NCHW elsewhere) runs weights
    and activations in NHWC; `winograd` (default: with channels_last when the C++ ops are
    built) the ResnetBlocks' 3x3 convolutions by Winograd F(4x4, 3x3)."""
    device = next(net.parameters()).device
    if channels_last is None:
        channels_last = device.type == "cpu"
    winograd = resolve_winograd(winograd, channels_last, device)
    fast = copy.deepcopy(net).eval()
    for i, cond in enumerate(fast.conditioners):          # first: they own a ResnetBlock
        if not hasattr(cond, "to_dynamic_ff_parser_attn_map"):
            fast.conditioners[i] = FastConditioning(cond)
    for parent in list(fast.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ResnetBlock):
                setattr(parent, name, fast_resnet_block(child))
            elif isinstance(child, Residual) and isinstance(child.fn, LinearAttention):
                child.fn = FastLinearAttention(child.fn)
    for level in (*fast.downs, *fast.cond_downs):
        if is_published_downsample(level[3]):
            level[3] = FastDownsample(level[3])
    for level in fast.ups:
        if is_published_upsample(level[3]):
            level[3] = FastUpsample(level[3])
    if channels_last:
        fast.__class__ = ChannelsLastMedSegDiffUnet
        fast.init_conv = ChannelsLastOutput(fast.init_conv)
        for m in fast.modules():
            if type(m) is ChannelLayerNorm:
                m.__class__ = FastChannelLayerNorm           # same parameters, other forward
        fast.to(memory_format=torch.channels_last)
        for cond in fast.conditioners:                   # the FF-Parser gates are not images
            if isinstance(cond, FastConditioning):
                cond.gate = cond.gate.contiguous()
    if winograd:                                         # after .to(): its u is not an image
        enable_winograd(fast)
    memoize_time_mlps(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    fast.is_fast = True
    return fast
