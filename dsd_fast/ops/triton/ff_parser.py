"""FF-Parser (frequency gate) as one Triton kernel per (b, c) plane, DFT-as-matmul.

    y = irfft2(rfft2(x, norm="ortho") * complex(weight), s=(H, W), norm="ortho")
    x, y   (B, C, H, W)
    weight (C, H, W//2+1, 2)  (real, imag) of the complex gate

Every transform is a small dense matrix product (tl.dot), so a plane is read once and
written once and the four transforms never leave registers/shared memory. With Wf = W//2+1
and the orthonormal scalings folded into the matrices:

    forward, rows (real DFT along W):   Xr = x @ Cw           Xi = x @ (-Sw)         (H, Wf)
        Cw[w, k] = cos(2 pi w k / W) / sqrt(W),  Sw[w, k] = sin(2 pi w k / W) / sqrt(W)
    forward, columns (DFT along H):     Y = (Ch - i Sh) @ X                          (H, Wf)
        Yr = Ch @ Xr + Sh @ Xi          Yi = Ch @ Xi - Sh @ Xr
        Ch[m, h] = cos(2 pi m h / H) / sqrt(H),  Sh likewise with sin (both symmetric)
    gate:                               Z = Y * (wr + i wi)
    inverse, columns:                   G = (Ch + i Sh) @ Z
        Gr = Ch @ Zr - Sh @ Zi          Gi = Ch @ Zi + Sh @ Zr
    inverse, rows (c2r along W):        y = Gr @ ICw - Gi @ ISw                      (H, W)
        ICw[k, w] = a_k cos(2 pi k w / W) / sqrt(W),  ISw[k, w] = a_k sin(...) / sqrt(W)
        a_k = 1 for the DC column k = 0 and (even W) the Nyquist column k = W/2, else 2:
        the half spectrum stands for both k and W-k (Hermitian symmetry). ISw's DC and
        Nyquist rows are exact zeros: irfft2 ignores those columns' imaginary parts, which
        torch's c2r does after the inverse over H, as here.

Tiles are padded to powers of two of at least 16 (tl.dot's minimum; the 4 and 8 px levels
of the network) by zero rows/columns in the matrices and masked loads, so padding adds
nothing. Arithmetic is float32 with input_precision="ieee" (no TF32: TF32's 10-bit mantissa
would cost ~1e-3 relative error against torch.fft); bf16/fp16 x is loaded and stored in its
own dtype, everything in between is float32.
"""
from __future__ import annotations

import math

import torch

from .runtime import check_device, device_guard, pad16, require_triton, tl, triton

# A plane's whole spectrum lives in one program (registers and shared memory). At 128 x 128
# the fp32 DFT matmuls ask for 262,144 B of shared memory per block, more than any NVIDIA
# GPU gives one block (sm_90: 232,448 B; sm_80: 166,912 B; checked by compiling for both,
# tests/ops/test_triton_aot.py): larger planes are served by cuFFT through the twin
# (ops/triton/__init__.py routes them), which is what they would otherwise fall back to.
MAX_SIZE = 64


@triton.jit
def _ff_parser_kernel(
    x_ptr, w_ptr, y_ptr,
    cw_ptr, nsw_ptr, ch_ptr, sh_ptr, icw_ptr, isw_ptr,   # DFT matrices, padded, contiguous
    C, H, W, WF,
    sxb, sxc, sxh, sxw,
    swc, swh, swk, swr,
    syb, syc, syh, syw,
    HP: tl.constexpr, WP: tl.constexpr, KP: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)    # one program per (b, c) plane; int64 offsets
    b = pid // C
    c = pid % C
    rh = tl.arange(0, HP)      # rows: h (space) or m (frequency along H)
    rw = tl.arange(0, WP)      # columns in space: w
    rk = tl.arange(0, KP)      # columns in frequency: k < Wf

    # (HP, WP) plane, zeros outside (H, W)
    pmask = (rh[:, None] < H) & (rw[None, :] < W)
    x = tl.load(x_ptr + b * sxb + c * sxc + rh[:, None] * sxh + rw[None, :] * sxw,
                mask=pmask, other=0.0).to(tl.float32)

    # forward real DFT along W: (HP, WP) @ (WP, KP) -> (HP, KP)
    wk = rw[:, None] * KP + rk[None, :]
    xr = tl.dot(x, tl.load(cw_ptr + wk), input_precision="ieee")
    xi = tl.dot(x, tl.load(nsw_ptr + wk), input_precision="ieee")

    # forward complex DFT along H: (HP, HP) @ (HP, KP)
    hh = rh[:, None] * HP + rh[None, :]
    ch = tl.load(ch_ptr + hh)
    sh = tl.load(sh_ptr + hh)
    yr = tl.dot(ch, xr, input_precision="ieee") + tl.dot(sh, xi, input_precision="ieee")
    yi = tl.dot(ch, xi, input_precision="ieee") - tl.dot(sh, xr, input_precision="ieee")

    # complex gate (H, Wf); zero in the padding, so padded frequencies stay zero
    kmask = (rh[:, None] < H) & (rk[None, :] < WF)
    wbase = w_ptr + c * swc + rh[:, None] * swh + rk[None, :] * swk
    wr = tl.load(wbase, mask=kmask, other=0.0).to(tl.float32)
    wi = tl.load(wbase + swr, mask=kmask, other=0.0).to(tl.float32)
    zr = yr * wr - yi * wi
    zi = yr * wi + yi * wr

    # inverse complex DFT along H (conjugate matrix: Ch + i Sh)
    gr = tl.dot(ch, zr, input_precision="ieee") - tl.dot(sh, zi, input_precision="ieee")
    gi = tl.dot(ch, zi, input_precision="ieee") + tl.dot(sh, zr, input_precision="ieee")

    # inverse real DFT along W (c2r): (HP, KP) @ (KP, WP) -> (HP, WP)
    kw = rk[:, None] * WP + rw[None, :]
    y = tl.dot(gr, tl.load(icw_ptr + kw), input_precision="ieee") \
        - tl.dot(gi, tl.load(isw_ptr + kw), input_precision="ieee")

    tl.store(y_ptr + b * syb + c * syc + rh[:, None] * syh + rw[None, :] * syw,
             y.to(y_ptr.dtype.element_ty), mask=pmask)


# (H, W, device) -> the six padded float32 matrices; built once per level and device.
# Build them before a CUDA-graph capture (one eager call does): allocation inside a capture
# is not allowed.
_DFT_CACHE: dict[tuple[int, int, str], tuple[torch.Tensor, ...]] = {}


def _cos_sin(n: int, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin(2 pi r c / n) for r < rows, c < cols, in float64. The angle index r*c is
    reduced mod n in integers first, so large products lose no precision."""
    t = (torch.arange(rows, dtype=torch.int64)[:, None]
         * torch.arange(cols, dtype=torch.int64)[None, :]) % n
    ang = t.to(torch.float64) * (2.0 * math.pi / n)
    cos, sin = torch.cos(ang), torch.sin(ang)
    # quarter turns exactly: sin(pi) = 1.2e-16 in float64, not 0
    cos[(4 * t) % n == 0] = torch.round(cos[(4 * t) % n == 0])
    sin[(4 * t) % n == 0] = torch.round(sin[(4 * t) % n == 0])
    return cos, sin


def dft_matrices(H: int, W: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(Cw, -Sw, Ch, Sh, ICw, ISw) zero-padded to (WP, KP), (HP, HP), (KP, WP); see the module
    docstring for the formulas."""
    key = (H, W, str(device))
    if key in _DFT_CACHE:
        return _DFT_CACHE[key]
    wf = W // 2 + 1
    HP, WP, KP = pad16(H), pad16(W), pad16(wf)

    cw, sw = _cos_sin(W, W, wf)                              # (W, Wf)
    cw, sw = cw / math.sqrt(W), sw / math.sqrt(W)
    ch, sh = _cos_sin(H, H, H)                               # (H, H)
    ch, sh = ch / math.sqrt(H), sh / math.sqrt(H)
    a = torch.full((wf,), 2.0, dtype=torch.float64)          # Hermitian weights a_k
    a[0] = 1.0
    if W % 2 == 0:
        a[W // 2] = 1.0
    icw = cw.t() * a[:, None]                                # (Wf, W)
    isw = sw.t() * a[:, None]
    isw[0] = 0.0                                             # imag of DC ignored
    if W % 2 == 0:
        isw[W // 2] = 0.0                                    # imag of Nyquist ignored

    def padded(m: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        out = torch.zeros(rows, cols, dtype=torch.float64)
        out[: m.shape[0], : m.shape[1]] = m
        return out.to(device=device, dtype=torch.float32).contiguous()

    mats = (padded(cw, WP, KP), padded(-sw, WP, KP), padded(ch, HP, HP), padded(sh, HP, HP),
            padded(icw, KP, WP), padded(isw, KP, WP))
    _DFT_CACHE[key] = mats
    return mats


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def ff_parser(x: torch.Tensor, weight: torch.Tensor, *, out: torch.Tensor | None = None
              ) -> torch.Tensor:
    """FF-Parser of x (B, C, H, W) with gate weight (C, H, W//2+1, 2); returns (B, C, H, W).

    out: optional preallocated (B, C, H, W) tensor of x's dtype, any strides, typically a
    channel slice `buf[:, c0:c0 + C]` of a concatenation buffer; only those channels are
    written. It may be x itself (each plane is read whole before it is written) but must
    not otherwise overlap x. 1 <= H, W <= MAX_SIZE (64).
    """
    require_triton("ff_parser")
    if x.dim() != 4:
        raise ValueError(f"ops.triton.ff_parser: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    wf = W // 2 + 1
    if tuple(weight.shape) != (C, H, wf, 2):
        raise ValueError(f"ops.triton.ff_parser: weight must be (C, H, W//2+1, 2) = {(C, H, wf, 2)} "
                         f"for x {tuple(x.shape)}, got {tuple(weight.shape)}")
    if not (1 <= H <= MAX_SIZE and 1 <= W <= MAX_SIZE):
        raise ValueError(f"ops.triton.ff_parser: planes from 1x1 to {MAX_SIZE}x{MAX_SIZE} supported "
                         f"(one plane per program), got {H}x{W}")
    if x.dtype not in _DTYPES or weight.dtype not in _DTYPES:
        raise TypeError(f"ops.triton.ff_parser: x and weight must be float32, bfloat16 or float16, "
                        f"got {x.dtype} and {weight.dtype}")
    if out is None:
        out = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != (B, C, H, W) or out.dtype != x.dtype:
        raise ValueError(f"ops.triton.ff_parser: out must be {(B, C, H, W)} {x.dtype}, got "
                         f"{tuple(out.shape)} {out.dtype}")
    device = check_device("ff_parser", x, weight, out)
    if B * C == 0:
        return out

    HP, WP, KP = pad16(H), pad16(W), pad16(wf)
    mats = dft_matrices(H, W, device)
    # Live tiles per program are ~HP*KP floats each; 128x128 planes need 8 warps.
    num_warps = 8 if HP * max(WP, KP) >= 128 * 64 else 4
    with device_guard(device):
        _ff_parser_kernel[(B * C,)](
            x, weight, out, *mats,
            C, H, W, wf,
            *x.stride(), *weight.stride(), *out.stride(),
            HP=HP, WP=WP, KP=KP, num_warps=num_warps,
        )
    return out
