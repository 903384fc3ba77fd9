"""The fast models' 3x3 convolutions by Winograd F(4x4, 3x3) on the CPU (`ops.winograd_conv3x3`).

Why: float32 direct convolution is at this kind of CPU's FMA limit (docs/PERFORMANCE.md,
session 10); Winograd does 36 multiply-adds per 4 x 4 outputs and channel pair instead of
144. `python bench/bench_winograd.py`: 2.0-2.7x oneDNN's channels_last convolution at the
isic2018 network's shapes on 1 and 2 threads, 1.0-1.1x at 16 -> 16 channels (too few to pay
for the transforms), within ~5e-6 of the output's scale.

    enable_winograd(fast_model)       # after the model's last .to(memory_format=...)

A layer keeps its plain weight (autograd, other devices and dtypes use it) and a
`WinogradWeight` beside it: the float32 transform (4x the weight's memory) made now, the
bfloat16 one (2x) made on the first call under bfloat16 autocast (precision="bf16") on CPUs
with AVX512_BF16, whose products it computes in bfloat16 (`ops.winograd_conv3x3_bf16`). The
transforms are not in the state dict and do not follow `.to(device)`: CUDA input takes
the plain convolution. The op reads and writes NHWC: for channels_last CPU models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops
from ...ops import winograd

__all__ = ["WinogradWeight", "winograd_mode", "conv3x3", "WinogradConv2d", "winograd_eligible",
           "enable_winograd", "resolve_winograd"]


def resolve_winograd(winograd: bool | None, channels_last: bool, device) -> bool:
    """A build_fast_model's `winograd` argument: by default on for a channels_last model on
    the CPU when the op is built; asked for without channels_last, refused (the op reads and
    writes NHWC)."""
    if winograd is None:
        return channels_last and ops.WINOGRAD and torch.device(device).type == "cpu"
    if winograd and not channels_last:
        raise ValueError("winograd=True needs a channels_last model (the op reads and writes "
                         "NHWC)")
    return winograd


def autocast_cpu_dtype() -> torch.dtype:
    get = getattr(torch, "get_autocast_dtype", None)
    return get("cpu") if get is not None else torch.get_autocast_cpu_dtype()


def winograd_mode(x: torch.Tensor) -> str | None:
    """How a layer with Winograd weights runs x: "fp32", "bf16" (under bfloat16 autocast,
    where the CPU does bfloat16 natively) or None (the plain convolution: CUDA, autograd,
    float64, other autocast)."""
    if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
        return None
    if torch.is_autocast_enabled("cpu"):
        return "bf16" if ops.WINOGRAD_BF16 and autocast_cpu_dtype() == torch.bfloat16 else None
    return "fp32" if x.dtype == torch.float32 else None


class WinogradWeight:
    """A 3x3 conv weight's Winograd transforms (ops.winograd_weight, _bf16)."""

    def __init__(self, weight: torch.Tensor):
        self.u = winograd.winograd_weight(weight)
        self.u16: torch.Tensor | None = None      # pack_bf16(u), on first bf16 use

    def conv(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor | None:
        """conv2d(x, weight, bias, padding=1) by Winograd, or None where it does not apply."""
        mode = winograd_mode(x)
        if mode == "fp32":
            return ops.winograd_conv3x3(x, self.u, bias)
        if mode == "bf16":
            if self.u16 is None:
                self.u16 = winograd.pack_bf16(self.u)     # not G w G^T a second time
            return ops.winograd_conv3x3_bf16(x, self.u16, bias)
        return None


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            wino: WinogradWeight | None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1), by Winograd when the layer has it and it applies."""
    y = None if wino is None else wino.conv(x, bias)
    return F.conv2d(x, weight, bias, padding=1) if y is None else y


class WinogradConv2d(nn.Conv2d):
    """An nn.Conv2d (3x3, stride 1, padding 1, one group) with a WinogradWeight. Made by
    `enable_winograd` changing an eligible conv's class: same parameters and keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.wino.conv(x, self.wino_bias)
        return super().forward(x) if y is None else y


def winograd_eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding in ((1, 1), "same") and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros"
            and winograd.supported(conv.in_channels, conv.out_channels))


@torch.no_grad()
def enable_winograd(model: nn.Module) -> int:
    """Give the 3x3 convolutions of `model` Winograd weights where their channels allow it:
    every module with an `enable_winograd()` method (FusedBlock, DiffSeg's
    FastResidualBlock) and every eligible nn.Conv2d (turned WinogradConv2d). Returns how
    many layers. Call it after any `.to(memory_format=...)`."""
    n = 0
    for m in model.modules():
        if callable(getattr(m, "enable_winograd", None)):
            n += m.enable_winograd()
        elif winograd_eligible(m):
            m.__class__ = WinogradConv2d
            m.wino = WinogradWeight(m.weight)
            bias = m.bias if m.bias is not None else m.weight.new_zeros(m.out_channels)
            m.wino_bias = bias.detach()
            n += 1
    return n
