"""Numeric precision of the denoiser: float32 (the default) or bfloat16.

    pipe.segment(images, precision="bf16")        # dsd-fast segment ... --precision bf16

"bf16" runs the network's convolutions and matmuls in bfloat16 (oneDNN's AMX / AVX-512 BF16
kernels on CPUs, tensor cores on NVIDIA GPUs) under `torch.autocast`: weights and activations
in bfloat16 where autocast puts them, float32 accumulation inside those kernels, float32 for
what autocast keeps in float32 (normalisations, softmax, the FF-Parser's FFT). The network's
output is cast back to float32 before the sampler sees it, so every sampler step (the noise
schedule arithmetic, x0 clipping, the ensemble mean) stays float32. The CPU fast models'
3x3 convolutions run as Winograd with bfloat16 products instead (families/shared/winograd.py;
float32 out, a few times bfloat16's per-layer error, the masks within the bar below).

It is only offered where the hardware does bfloat16 natively: AVX-512 BF16 or AMX on x86
CPUs, compute capability 8.0+ on NVIDIA GPUs. Elsewhere oneDNN would emulate it (slower than
float32), so "bf16" falls back to float32 with one warning. The masks it gives agree with
float32's to Dice >= 0.99 per image (MODEL_CARD.md, tests/test_precision.py); the
probability maps differ in the second or third digit.

Autocast casts the float32 weights on every call (about 2-5% of an isic2018 forward,
measured); keeping a bfloat16 copy of the weights would save that at the cost of a second
copy of the model in memory, and is not done.
"""
from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


def native_bf16(device) -> bool:
    """Whether `device` computes bfloat16 natively (not emulated)."""
    device = torch.device(device)
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:                     # torch < 2.3: no including_emulation
            return torch.cuda.get_device_capability(device)[0] >= 8
    return False


def resolve_precision(precision: str, device) -> str:
    """Validate `precision`; "bf16" on hardware without native bfloat16 becomes "fp32"
    (one warning per device kind)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and not native_bf16(device):
        _warn_no_bf16(torch.device(device).type)
        return "fp32"
    return precision


@functools.lru_cache(maxsize=None)
def _warn_no_bf16(kind: str) -> None:
    warnings.warn(f"precision='bf16' asked for, but this {kind} has no native bfloat16 "
                  "(x86: AVX-512 BF16 or AMX; NVIDIA: compute capability 8.0+); running "
                  "float32 instead", RuntimeWarning, stacklevel=4)


class Bf16Denoiser(nn.Module):
    """`net` run under bfloat16 autocast, its output returned as float32.

    Same call as the network it wraps (`net(*inputs)`); attributes the samplers look up
    (`config`, `is_fast`, ...) are forwarded to it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *inputs, **kwargs):
        device = next((a.device for a in inputs if isinstance(a, torch.Tensor)),
                      torch.device("cpu"))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = self.net(*inputs, **kwargs)
        return as_float32(out)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)


def as_float32(out):
    """A network's output (a tensor or a tuple / list of them) with its floating tensors in
    float32: nothing downstream (sampler, loss) sees bfloat16."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(as_float32(o) for o in out)
    return out


def with_precision(net: nn.Module, precision: str) -> nn.Module:
    """`net` itself for "fp32", wrapped in `Bf16Denoiser` for "bf16" (already resolved)."""
    if precision == "fp32":
        return net
    if precision == "bf16":
        return Bf16Denoiser(net)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
