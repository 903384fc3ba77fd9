"""DiffSeg's "diffusion difference": from two denoisers' residuals to a mask (diffseg.md 5).

For an image x in the models' range and one draw (eps_have, eps_no):
    x_m  = sqrt(abar_0) x + sqrt(1 - abar_0) eps_m        t = 0, T from the checkpoint
    r_m  = x_m - net_m(x_m, 0)                             the "predicted noise" residual
    I_m  = trunc(127.5 (r_m + 1))                          toward zero, no clipping
    L_m  = 0.299 I_R + 0.587 I_G + 0.114 I_B - its min     float32
    G    = L_no - 1.5 L_have
    N    = 255 (G - min G) / (max G - min G)               per image, float32
    mask = clip(1.2 N, 0, 255) < 189                       lesion = True
All of it in float32 torch, in the order of the official numpy code, so the masks agree
with it pixel for pixel up to float rounding at truncation and threshold boundaries
(tests/families/test_diffseg_parity.py counts them).
"""
from __future__ import annotations

import torch

from ...diffusion import Schedule

LUMA = (0.299, 0.587, 0.114)
HAVE_WEIGHT = 1.5            # G = L_no - 1.5 L_have
BRIGHTEN = 1.2
THRESHOLD = 189              # the published mask; a display-only pass used 180


def t0_coefficients(timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(abar_0), sqrt(1 - abar_0)) of the scaled linear schedule of T steps, computed in
    float64 and cast to float32 tensors, as the official code does (T = 1000: 0.99995,
    0.01)."""
    ac0 = Schedule.scaled_linear(timesteps).alphas_cumprod[0]
    return ac0.sqrt().float(), (1 - ac0).sqrt().float()


def residual(net, x: torch.Tensor, eps: torch.Tensor, a: torch.Tensor,
             s: torch.Tensor) -> torch.Tensor:
    """x_t - net(x_t, 0) with x_t = a x + s eps (one model, one draw, batched); a and s are
    float32 0-d tensors, multiplied in float32 as the official per-sample lookup is."""
    x_t = a.to(x.device) * x + s.to(x.device) * eps
    t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return x_t - net(x_t, t)


def _luma(r: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) residual -> (B, H, W) min-shifted luma of its truncated 8-bit picture."""
    pix = (127.5 * (r + 1)).trunc()                      # numpy astype(int): toward zero
    w = torch.tensor(LUMA, dtype=torch.float32, device=r.device).view(1, 3, 1, 1)
    lum = (pix.float() * w).sum(dim=1)
    return lum - lum.amin(dim=(1, 2), keepdim=True)


def difference_map(r_have: torch.Tensor, r_no: torch.Tensor) -> torch.Tensor:
    """Residuals (B, 3, H, W) -> N (B, H, W) in [0, 255]: low where the lesion is."""
    g = _luma(r_no) - _luma(r_have) * HAVE_WEIGHT
    g = g - g.amin(dim=(1, 2), keepdim=True)
    return g * (255 / g.amax(dim=(1, 2), keepdim=True))


def mask_from_difference(n: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    return (n * BRIGHTEN).clamp(0, 255) < threshold
