"""DermoSegDiff's training loss: eps-MSE plus the boundary-aware weighted MSE.

    L = 1.0 * mean((eps_hat - eps)^2) + 0.25 * mean(W * (eps_hat - eps)^2)

W (per sample and mask channel, (H, W)) emphasises the lesion boundary, more so at small t:
    m  = x_0 min-max normalised over the batch, then per sample, to [0, 1]
    if sum(m) > 1% of H*W (H = the last dimension, as published):
        E = boundary pixels of m;  D = Euclidean distance to the nearest boundary pixel
        A = minmax(H * 1.1415 - D)            (1 on the boundary, 0 at the farthest pixel)
        p(t) = (gamma * (T - t) / T) ** gamma;  W = A ** p(t)
    else W = 1.

Boundary pixels: the published code takes cv2.Canny(mask, 0, 0) of the 0/1 mask; we compute
the same edge map in numpy (`canny_zero_thresholds`, checked against OpenCV outside the repo),
so OpenCV is not a dependency. Distances use scipy.ndimage's exact Euclidean transform, as
cv2.distanceTransform with DIST_MASK_PRECISE does.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

L2_WEIGHT = 1.0
BOUNDARY_WEIGHT = 0.25
GAMMA_PH2 = 0.25
BOUNDARY_SPREAD = 1.1415      # the published constant in A = minmax(H * 1.1415 - D)


# OpenCV's Canny compares gradient directions in fixed point: tan(22.5 deg) << 15.
_CANNY_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _CANNY_SHIFT) + 0.5)


def canny_zero_thresholds(mask: np.ndarray) -> np.ndarray:
    """Edges of a 0/1 image as cv2.Canny(img, 0, 0) finds them (aperture 3, L1 magnitude).

    With both thresholds 0, hysteresis keeps every pixel that survives non-maximum
    suppression with a nonzero gradient, so Canny reduces to:
      dx, dy = 3x3 Sobel (borders replicated);  mag = |dx| + |dy|
      keep p if mag > 0 and mag is a maximum along the quantised gradient direction,
      with OpenCV's tie rule (strict on one side, >= on the other; strict both on diagonals).
    This decides on which side of a 0/1 step the one-pixel edge falls.
    """
    img = np.pad(mask.astype(np.int64), 1, mode="edge")
    dx = ndimage.correlate(img, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]), mode="nearest")
    dy = ndimage.correlate(img, np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]), mode="nearest")
    dx, dy = dx[1:-1, 1:-1], dy[1:-1, 1:-1]
    mag = np.abs(dx) + np.abs(dy)
    m = np.pad(mag, 1)                        # zero magnitude outside the image
    c = m[1:-1, 1:-1]
    left, right = m[1:-1, :-2], m[1:-1, 2:]
    up, down = m[:-2, 1:-1], m[2:, 1:-1]
    up_left, up_right = m[:-2, :-2], m[:-2, 2:]
    down_left, down_right = m[2:, :-2], m[2:, 2:]
    x = np.abs(dx)
    y = np.abs(dy) << _CANNY_SHIFT
    tg22x = x * _TG22
    tg67x = tg22x + (x << (_CANNY_SHIFT + 1))
    horizontal = y < tg22x
    vertical = ~horizontal & (y > tg67x)
    diagonal = ~horizontal & ~vertical
    same_sign = (dx ^ dy) >= 0                # s = +1 in OpenCV
    keep_h = (c > left) & (c >= right)
    keep_v = (c > up) & (c >= down)
    # s = +1: compare with up-left and down-right; s = -1: up-right and down-left
    keep_d = np.where(same_sign, (c > up_left) & (c > down_right),
                      (c > up_right) & (c > down_left))
    keep = (horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d)
    return (mag > 0) & keep


def time_exponent(t, T: int, gamma: float):
    """p(t) = (gamma * (T - t) / T) ** gamma."""
    return (gamma * (T - t) / T) ** gamma


def boundary_weight_map(x0: torch.Tensor, t: torch.Tensor, T: int,
                        gamma: float = GAMMA_PH2) -> torch.Tensor:
    """x0 (B, K, H, W) masks in [-1, 1], t (B,) -> W (B, K, H, W) float32.

    K = 1 is the published map. A model of K classes (classes.py) gets one map per class
    channel, each made from that class's mask exactly as the published one is from the
    lesion's (the min-max over the whole batch first, as published), so each channel's
    noise error is weighted at its own class's boundary (the cup's rim as well as the
    disc's)."""
    x = x0.detach().cpu().double().numpy()
    x = (x - x.min()) / max(x.max() - x.min(), 1e-12)          # over the batch
    b, k = x.shape[:2]
    maps = [_one_weight_map(x[i, c], ti, T, gamma)
            for i, ti in enumerate(t.tolist()) for c in range(k)]
    out = np.stack(maps).reshape(b, k, *x.shape[2:]).astype(np.float32)
    return torch.from_numpy(out).to(x0.device)


def _one_weight_map(xi: np.ndarray, ti: int, T: int, gamma: float) -> np.ndarray:
    """One (H, W) mask channel (batch-normalised to [0, 1]) at step ti -> its weight map."""
    size = xi.shape[-1]
    rng = xi.max() - xi.min()
    if xi.sum() > size * size / 100.0 and rng > 0:
        mask = (xi - xi.min()) / rng >= 0.5
        edge = canny_zero_thresholds(mask)
        dist = ndimage.distance_transform_edt(~edge)
        a = size * BOUNDARY_SPREAD - dist
        a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
        return a ** time_exponent(ti, T, gamma)
    # Almost no foreground, or a mask with no boundary at all: uniform weight.
    return np.ones_like(xi)


def dermosegdiff_loss(eps_hat: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor,
                      t: torch.Tensor, T: int, gamma: float = GAMMA_PH2,
                      boundary: bool = True) -> tuple[torch.Tensor, dict]:
    sq = (eps_hat - eps) ** 2
    l2 = sq.mean()
    if not boundary:
        return l2, {"l2": l2.item()}
    lb = (boundary_weight_map(x0, t, T, gamma) * sq).mean()
    total = L2_WEIGHT * l2 + BOUNDARY_WEIGHT * lb
    return total, {"l2": l2.item(), "boundary": lb.item(), "loss": total.item()}
