"""Reference twins of the fused ops in `dsd_fast.ops`: the same formulas in plain PyTorch.

They are the oracle of the op tests and the fallback of `dsd_fast.ops` when neither the C++
extension (CPU) nor the Triton kernels (CUDA) can take the inputs. Each follows the layer
code of the DermoSegDiff reference (families/dermosegdiff/layers.py) line for line.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# The linear-attention op's fixed head layout: 4 heads x 32 dimensions, as DermoSegDiff's
# and med-seg-diff-pytorch's LinearAttention (families/*/layers.py) hold it. Written here
# again so that the bottom layer imports no family.
HEADS, DIM_HEAD = 4, 32

__all__ = ["ff_parser_ref", "ff_parser_out_ref", "group_norm_silu_ref", "gated_conv1x1_ref",
           "linear_attention_ref"]


def ff_parser_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """FF-Parser gate (layers.FFParser.forward without the size check).

    x (B, C, H, W) float32, weight (C, H, W//2+1, 2) real/imag -> (B, C, H, W).
    """
    h, w = x.shape[-2:]
    spec = torch.fft.rfft2(x, dim=(-2, -1), norm="ortho")          # (B, C, H, W//2+1) complex
    spec = spec * torch.view_as_complex(weight.contiguous())
    return torch.fft.irfft2(spec, s=(h, w), dim=(-2, -1), norm="ortho")


def ff_parser_out_ref(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`ff_parser_ref` written into `out` (e.g. a channel slice of a concatenation buffer)."""
    out.copy_(ff_parser_ref(x, weight))
    return out


def group_norm_silu_ref(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, groups: int,
                        eps: float, scale: torch.Tensor | None = None,
                        shift: torch.Tensor | None = None) -> torch.Tensor:
    """layers.Block after its conv: GroupNorm -> x * (scale + 1) + shift -> SiLU.

    x (B, C, H, W); gamma, beta (C,); scale, shift (B, C) or None.
    """
    y = F.group_norm(x, groups, gamma, beta, eps)
    b, c = x.shape[:2]
    if scale is not None:
        y = y * (scale.reshape(b, c, 1, 1) + 1)
    if shift is not None:
        y = y + shift.reshape(b, c, 1, 1)
    return F.silu(y)


def gated_conv1x1_ref(g: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      x: torch.Tensor) -> torch.Tensor:
    """Noise-feature fusion of model.EncoderLevel: g_feedback(g) * x.

    g (B, Cg, H, W), weight (Cx, Cg, 1, 1) or (Cx, Cg), bias (Cx,), x (B, Cx, H, W).
    """
    w = weight.reshape(weight.shape[0], -1, 1, 1)
    return F.conv2d(g, w, bias) * x


def linear_attention_ref(xn: torch.Tensor, w_qkv: torch.Tensor, w_out: torch.Tensor,
                         b_out: torch.Tensor) -> torch.Tensor:
    """layers.LinearAttention up to its output GroupNorm: to_out[0](attention(xn)).

    xn (B, C, H, W) (already PreNorm'd), w_qkv (384, C[, 1, 1]), w_out (Co, 128[, 1, 1]),
    b_out (Co,) -> (B, Co, H, W). The published order: q, k, v, two einsums, the 1x1 conv.
    """
    b, c, h, w = xn.shape
    hidden = HEADS * DIM_HEAD
    qkv = F.conv2d(xn, w_qkv.reshape(3 * hidden, c, 1, 1))
    q, k, v = (t.reshape(b, HEADS, DIM_HEAD, h * w) for t in qkv.chunk(3, dim=1))
    q = q.softmax(dim=-2) * DIM_HEAD ** -0.5
    k = k.softmax(dim=-1)
    context = torch.einsum("bhdn,bhen->bhde", k, v)
    out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, hidden, h, w)
    return F.conv2d(out, w_out.reshape(w_out.shape[0], hidden, 1, 1), b_out)
