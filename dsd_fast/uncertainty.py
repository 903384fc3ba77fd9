"""Uncertainty maps, the Generalized Energy Distance, and STAPLE fusion of sampled masks.

A diffusion segmenter gives many plausible masks per image. This module turns them into:

* `entropy_map`: per-pixel binary entropy (bits) of the mean foreground probability;
* `ged` / `sample_diversity`: the Generalized Energy Distance of Kohl et al. (2018) between
  the model's samples and the annotations, with d = 1 - IoU;
* `staple` / `staple_fusion`: real STAPLE (Warfield, Zou & Wells 2004), an EM estimate of
  every sample's ("rater's") sensitivity and specificity and of the per-pixel posterior
  probability that the true label is foreground.

Masks are boolean arrays (or numbers that are all 0 or 1); a stack is shaped (N, H, W)
(any number of trailing spatial dimensions works).
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from .metrics import _as_mask


def _as_stack(x, name: str) -> np.ndarray:
    """(N, ...) stack of binary masks as bool; a single mask (2-D) becomes a stack of one."""
    arr = _as_mask(x, name)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim < 3:
        raise ValueError(f"{name} must be a mask (H, W) or a stack (N, H, W), "
                         f"got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------- entropy

def entropy_map(prob) -> np.ndarray:
    """Binary entropy in bits of a foreground-probability map, element-wise:

        H(p) = -p log2 p - (1 - p) log2 (1 - p),   with 0 log 0 = 0,

    so H = 0 where all samples agree (p = 0 or 1) and H = 1 at p = 0.5. `prob` is the mean
    foreground probability (e.g. `SegmentationResult.probability`, or `samples.mean(0)`
    for a stack of binary samples). Returns float64, same shape.
    """
    p = np.asarray(prob, dtype=np.float64)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("prob must hold probabilities in [0, 1] (no nan)")
    q = 1.0 - p
    # log2 of 0 is -inf and 0 * -inf is nan: evaluate the logs only where the factor is > 0.
    h = np.zeros_like(p)
    np.subtract(h, p * np.log2(p, out=np.zeros_like(p), where=p > 0), out=h)
    np.subtract(h, q * np.log2(q, out=np.zeros_like(q), where=q > 0), out=h)
    return h


# --------------------------------------------------------------------------- GED

def pairwise_iou(a, b) -> np.ndarray:
    """(n, m) IoU matrix between the masks of stacks a (n, ...) and b (m, ...).

    Empty-vs-empty pairs (union = 0) have IoU = 1 (two empty masks agree perfectly), the
    ISIC convention also used by `metrics.iou`. Kohl et al.'s code instead gives NaN there and
    averages with nanmean; the two agree whenever no pair of masks is empty-vs-empty.
    """
    a = _as_stack(a, "a")
    b = _as_stack(b, "b")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"masks must have the same shape, got {a.shape[1:]} and {b.shape[1:]}")
    fa = a.reshape(len(a), -1).astype(np.float64)
    fb = b.reshape(len(b), -1).astype(np.float64)
    inter = fa @ fb.T                                  # exact: integer counts < 2**53
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)


def _mean_distance(a, b) -> float:
    # Mean of the full distance matrix d = 1 - IoU, diagonal included (Kohl's estimator).
    return float((1.0 - pairwise_iou(a, b)).mean())


def sample_diversity(samples) -> float:
    """E[d(S, S')] = mean over the full N x N matrix of d = 1 - IoU between samples
    (diagonal zeros included, as in Kohl et al.'s estimator). 0 when all samples agree."""
    return _mean_distance(samples, samples)


def ged(samples, annotations) -> dict:
    """Generalized Energy Distance (Kohl et al. 2018) with d(a, b) = 1 - IoU(a, b):

        GED^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]

    S: the model's samples (N, H, W); Y: the annotations (M, H, W), or one (H, W) mask.
    Each expectation is the mean of the full N x M, N x N or M x M distance matrix
    (diagonals included); with one annotation E[d(Y, Y')] = 0. Empty-vs-empty pairs count as
    IoU = 1, d = 0 (see `pairwise_iou`).

    Returns a dict: ged_squared, ged = sqrt(max(0, ged_squared)) (the estimate can dip below
    zero since 1 - IoU need not be a kernel-compatible distance), cross = E[d(S, Y)],
    sample_diversity = E[d(S, S')], annotation_diversity = E[d(Y, Y')].
    """
    s = _as_stack(samples, "samples")
    y = _as_stack(annotations, "annotations")
    if s.shape[1:] != y.shape[1:]:
        raise ValueError(f"samples and annotations must have the same mask shape, got "
                         f"samples {s.shape[1:]} and annotations {y.shape[1:]}")
    cross = _mean_distance(s, y)
    div_s = _mean_distance(s, s)
    div_y = _mean_distance(y, y)
    ged2 = 2.0 * cross - div_s - div_y
    return {"ged_squared": ged2, "ged": float(np.sqrt(max(0.0, ged2))), "cross": cross,
            "sample_diversity": div_s, "annotation_diversity": div_y}


# --------------------------------------------------------------------------- STAPLE

def diffseg_code_ged(samples) -> float:
    """What DiffSeg's optimize.py prints as "GED", for comparison only: NOT the generalised
    energy distance of Kohl et al. (`ged` above). Over N uint8 masks (0/255): d_ij =
    sqrt(sum((a_i - a_j)^2)) computed in uint8, so differences and squares wrap modulo 256
    (every differing 0/255 pixel adds 1, not 65025: d_ij = sqrt(number of differing
    pixels)), then sqrt(2 / N^2 * sum over i < j of d_ij). Samples only, no annotation."""
    a = np.asarray(samples)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    a = a.astype(np.uint8)
    n = len(a)
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            diff = (a[i].ravel() - a[j].ravel()).astype(np.uint8)      # wraps, as published
            total += float(np.sqrt(np.sum((diff ** 2).astype(np.uint8))))
    return float(np.sqrt(2 * total / n ** 2))


def error_rates_by_uncertainty(masks, truths, stds, top: float = 0.1) -> dict:
    """Does the ensemble's std point at the errors? Per image, the error rate (mask != truth)
    among its `top` fraction of highest-std pixels and among the rest, averaged over images
    (images whose std is constant are left out). (H, W) arrays per image."""
    hi_rates, rest_rates = [], []
    for mask, truth, std in zip(masks, truths, stds):
        err = np.asarray(mask) != np.asarray(truth)
        hi = std >= np.quantile(std, 1 - top)
        if hi.all() or not hi.any():
            continue
        hi_rates.append(err[hi].mean())
        rest_rates.append(err[~hi].mean())
    return {"error_rate_top": float(np.mean(hi_rates)) if hi_rates else float("nan"),
            "error_rate_rest": float(np.mean(rest_rates)) if rest_rates else float("nan"),
            "images": len(hi_rates)}


def staple(decisions, max_iter: int = 100, tol: float = 1e-7, prior=None):
    """STAPLE (Warfield, Zou & Wells, IEEE TMI 2004) for binary decisions.

    decisions: (R, H, W) binary masks, one per rater (here: per diffusion sample).
    Unknowns: rater sensitivities p_j, specificities q_j, and the hidden true labels T_i.
    EM, iterated until max_j |change in p_j|, |change in q_j| <= tol, or max_iter times:

      M-step  p_j = sum_i W_i D_ij / sum_i W_i
              q_j = sum_i (1 - W_i)(1 - D_ij) / sum_i (1 - W_i)
      E-step  a_i = f_i prod_j p_j^D_ij (1 - p_j)^(1 - D_ij)
              b_i = (1 - f_i) prod_j (1 - q_j)^D_ij q_j^(1 - D_ij)
              W_i = P(T_i = 1 | D, p, q) = a_i / (a_i + b_i)

    f is the foreground prior: by default the mean of all decisions (one number, as ITK /
    SimpleITK's STAPLEImageFilter with ConfidenceWeight 1); or pass `prior`, a number in
    [0, 1] or an array broadcastable to (H, W) (a spatially varying prior).

    Like ITK, W starts as the pixel-wise mean of the decisions and each iteration runs the
    M-step then the E-step, and the returned p, q are those that produced the returned W.
    The E-step is done in log space (a sum of log-likelihoods instead of a product), so many
    raters do not underflow. Degenerate cases: a rate whose denominator is 0 (W all 0, or all
    1) is set to 1.0 (no evidence against the rater); rates are clipped to [0, 1] (rounding
    can put a perfect rater's at 1 + 1e-15); a pixel where both a_i and b_i are 0
    (raters that the estimate calls perfect disagree) gets W_i = f_i.

    Returns (posterior W as float64 (H, W), sensitivities (R,), specificities (R,)).
    """
    d = _as_stack(decisions, "decisions")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    n_raters, shape = d.shape[0], d.shape[1:]
    flat = d.reshape(n_raters, -1)                       # (R, P) bool
    flat_f = flat.astype(np.float64)

    if prior is None:
        f = np.full(flat.shape[1], flat_f.mean())
    else:
        f = np.broadcast_to(np.asarray(prior, dtype=np.float64), shape).reshape(-1)
        if np.isnan(f).any() or (f < 0).any() or (f > 1).any():
            raise ValueError("prior must lie in [0, 1]")
    with np.errstate(divide="ignore"):
        log_prior_odds = np.log(f) - np.log1p(-f)        # +-inf where f is 0 or 1

    w = flat_f.mean(axis=0)                              # initial W: the vote fraction
    p_last = q_last = None
    for _ in range(max_iter):
        # M-step: rates of each rater, weighted by the current posterior.
        sw, s1w = w.sum(), (1.0 - w).sum()
        p = flat_f @ w / sw if sw > 0 else np.ones(n_raters)
        q = (1.0 - flat_f) @ (1.0 - w) / s1w if s1w > 0 else np.ones(n_raters)
        # A rater with no errors of one kind (e.g. one that marks only foreground: q = 1)
        # can come out at 1 + 1e-15 (numerator and denominator are summed in different
        # orders); log1p(-rate) is then NaN and every pixel that rater marks would fall back
        # to the prior. Rates are probabilities: clip.
        p, q = np.clip(p, 0.0, 1.0), np.clip(q, 0.0, 1.0)
        # E-step, as a log-odds: log a_i - log b_i summed over raters.
        with np.errstate(divide="ignore", invalid="ignore"):
            log_a = np.where(flat, np.log(p)[:, None], np.log1p(-p)[:, None]).sum(0)
            log_b = np.where(flat, np.log1p(-q)[:, None], np.log(q)[:, None]).sum(0)
            logit = log_prior_odds + log_a - log_b       # nan only for -inf - (-inf)
        w = expit(logit)
        w = np.where(np.isnan(w), f, w)
        if p_last is not None and max(np.abs(p - p_last).max(), np.abs(q - q_last).max()) <= tol:
            break
        p_last, q_last = p, q
    return w.reshape(shape), p, q


def staple_fusion(samples) -> np.ndarray:
    """Fuse sampled masks into one: STAPLE posterior > 0.5 (bool, (H, W))."""
    return staple(samples)[0] > 0.5


__all__ = ["entropy_map", "pairwise_iou", "sample_diversity", "ged", "staple", "staple_fusion"]
