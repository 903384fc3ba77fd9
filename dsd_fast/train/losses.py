"""Training losses of the families: DermoSegDiff's (below), med-seg-diff-pytorch's and the
official MedSegDiff code's (at the end).

DermoSegDiff: eps-MSE plus the boundary-aware weighted MSE.

    L = 1.0 * mean((eps_hat - eps)^2) + 0.25 * mean(W * (eps_hat - eps)^2)

W (per sample, (H, W)) emphasises the lesion boundary, more so at small t:
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

import math

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
    """x0 (B, 1, H, W) masks in [-1, 1], t (B,) -> W (B, 1, H, W) float32."""
    x = x0.detach().cpu().double().numpy()
    x = (x - x.min()) / max(x.max() - x.min(), 1e-12)          # over the batch
    size = x.shape[-1]
    weights = []
    for xi, ti in zip(x, t.tolist()):
        xi = xi[0]
        rng = xi.max() - xi.min()
        if xi.sum() > size * size / 100.0 and rng > 0:
            mask = (xi - xi.min()) / rng >= 0.5
            edge = canny_zero_thresholds(mask)
            dist = ndimage.distance_transform_edt(~edge)
            a = size * BOUNDARY_SPREAD - dist
            a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
            w = a ** time_exponent(ti, T, gamma)
        else:
            # Almost no foreground, or a mask with no boundary at all: uniform weight.
            w = np.ones_like(xi)
        weights.append(w)
    return torch.from_numpy(np.stack(weights)[:, None].astype(np.float32)).to(x0.device)


def draw_t_and_noise(gen: torch.Generator, low: int, high: int,
                     x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U{low..high-1} per sample and eps ~ N(0, 1) shaped like x0, drawn from the CPU
    generator `gen` (a run draws the same numbers on every device, so a GPU run repeats a CPU
    one's batches and timesteps) and moved to x0's device."""
    t = torch.randint(low, high, (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    return t.to(x0.device), noise.to(x0.device)


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


def medsegdiff_loss(model, image: torch.Tensor, x0: torch.Tensor, schedule, objective: str,
                    self_condition: bool, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """med-seg-diff-pytorch's p_losses: t ~ U{0..T-1} (t = 0 included), x_t from fresh noise,
    plain MSE against the objective's target (noise, x0, or v = sqrt(abar) eps -
    sqrt(1 - abar) x0). Self-conditioned models see, half of the time (a coin per batch),
    their own no-grad x0 estimate at the same x_t, unclamped, as the package does."""
    t, noise = draw_t_and_noise(gen, 0, schedule.T, x0)
    x_t = schedule.q_sample(x0, t, noise)
    ac = schedule.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
    a, r = ac.sqrt(), (1 - ac).sqrt()
    kwargs = {}
    if self_condition and torch.rand((), generator=gen).item() < 0.5:
        with torch.no_grad():
            out = model(x_t, image, t)
            kwargs["x_self_cond"] = {"pred_noise": (x_t - r * out) / a, "pred_x0": out,
                                     "pred_v": a * x_t - r * out}[objective].detach()
    pred = model(x_t, image, t, **kwargs)
    target = {"pred_noise": noise, "pred_x0": x0, "pred_v": a * noise - r * x0}[objective]
    loss = ((pred - target) ** 2).mean()
    return loss, {"loss": loss.item()}


# ---------------------------------------------------------------- the official MedSegDiff code
CAL_WEIGHT = 10.0        # train_util.forward_backward: loss * weights + loss_cal * 10


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_nll(x, means, log_scales):
    """-log P(x) per element (nats) of a Gaussian discretised to 255 bins of [-1, 1], the
    edge bins open (guided-diffusion's decoder term; x here is the {0, 1} mask)."""
    centred = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = _approx_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return -torch.where(x < -0.999, log_cdf_plus,
                        torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def official_medsegdiff_terms(model, image: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                              noise: torch.Tensor, schedule) -> dict[str, torch.Tensor]:
    """Per-sample terms of `training_losses_segmentation` (medsegdiff.md 2.8), learned-range
    variance, eps objective:
        res = [mask > 0] in {0, 1} (x0 here is the engine's [-1, 1] mask: x0 > -1)
        x_t = sqrt(abar_t) res + sqrt(1 - abar_t) noise;   (out, cal) = model(x_t, image, t)
        loss_diff = mean (noise - out[:, 0])^2
        vb = KL(q(x_{t-1} | x_t, res) || p(x_{t-1} | x_t)) / log 2, the model's mean from the
             detached eps and unclipped x0 (only the variance channel learns from it);
             at t = 0 the discretised-Gaussian NLL of res instead
        loss_cal = mean (res - cal)^2
    Tables are float64 gathered and cast to float32, as the original's _extract_into_tensor."""
    from ..diffusion.ddpm import learned_range_tables
    b = x0.shape[0]
    tab = learned_range_tables(schedule)
    ac = schedule.alphas_cumprod
    tab["sqrt_ac"], tab["sqrt_1m_ac"] = ac.sqrt(), (1 - ac).sqrt()
    at = {k: v.to(x0.device)[t].float().view(b, 1, 1, 1) for k, v in tab.items()}
    res = (x0 > -1).to(x0.dtype)
    x_t = at["sqrt_ac"] * res + at["sqrt_1m_ac"] * noise
    out, cal = model(x_t, image, t)
    eps, v = out[:, :1], out[:, 1:2]
    true_mean = at["coef1"] * res + at["coef2"] * x_t
    x0_hat = at["sqrt_recip_ac"] * x_t - at["sqrt_recipm1_ac"] * eps.detach()
    model_mean = at["coef1"] * x0_hat + at["coef2"] * x_t
    frac = (v + 1) / 2
    model_log_var = frac * at["max_log"] + (1 - frac) * at["min_log"]
    dims = tuple(range(1, x0.dim()))
    kl = normal_kl(true_mean, at["min_log"], model_mean, model_log_var).mean(dims)
    nll = discretized_gaussian_nll(res, model_mean, 0.5 * model_log_var).mean(dims)
    vb = torch.where(t == 0, nll, kl) / math.log(2.0)
    loss_diff = ((noise - eps) ** 2).mean(dims)
    loss_cal = ((res - cal) ** 2).mean(dims)
    return {"loss_diff": loss_diff, "vb": vb, "loss_cal": loss_cal, "loss": loss_diff + vb}


def official_medsegdiff_loss(model, image: torch.Tensor, x0: torch.Tensor, schedule,
                             gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The official training step's loss: t ~ U{0..T-1} (its uniform schedule sampler),
    mean over the batch of loss_diff + vb + 10 loss_cal. The model trains in train mode, as
    theirs: batch statistics in the anchor's BatchNorms and Dropout2d(0.5) in its encoder."""
    t, noise = draw_t_and_noise(gen, 0, schedule.T, x0)
    terms = official_medsegdiff_terms(model, image, x0, t, noise, schedule)
    loss = (terms["loss"] + CAL_WEIGHT * terms["loss_cal"]).mean()
    parts = {k: v.mean().item() for k, v in terms.items() if k != "loss"}
    return loss, {**parts, "loss": loss.item()}
