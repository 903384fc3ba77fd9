"""DenseCRF refinement of ensemble probabilities (DiffSeg's protocol), via `pydensecrf2`.

Fully connected CRF (Kraehenbuehl & Koltun 2011) with two labels; unary = -log p from the
foreground probability in [0, 1] (not 0-255 masks, which saturate the unary), a bilateral
kernel (sxy 80, srgb 13, compat 10), a Gaussian kernel (sxy 3, compat 3), 5 mean-field
iterations. DiffSeg repeats this K = 3 times on the mean of H = 4 randomly chosen samples
and averages the K refined maps.
"""
from __future__ import annotations

import numpy as np

BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_COMPAT = 80, 13, 10
GAUSSIAN_SXY, GAUSSIAN_COMPAT = 3, 3
ITERATIONS = 5
REPEATS, SAMPLES_PER_REPEAT = 3, 4
_PROB_FLOOR = 1e-5       # keeps -log p finite


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ImportError(
            "refine='crf' needs the optional DenseCRF extra: pip install 'dsd_fast[crf]' "
            "(it builds pydensecrf2 from source and needs g++)") from None
    return dcrf


def crf_refine(image_rgb: np.ndarray, prob: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """image (H, W, 3) uint8, prob (H, W) foreground probability -> refined (H, W) float32."""
    dcrf = _densecrf()
    h, w = prob.shape
    if image_rgb.shape != (h, w, 3) or image_rgb.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 matching prob {prob.shape}, "
                         f"got {image_rgb.shape} {image_rgb.dtype}")
    p = np.clip(prob.astype(np.float32), _PROB_FLOOR, 1 - _PROB_FLOOR)
    unary = -np.log(np.stack([1 - p, p]).reshape(2, -1))
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB,
                             rgbim=np.ascontiguousarray(image_rgb), compat=BILATERAL_COMPAT)
    q = np.asarray(crf.inference(iterations), dtype=np.float32).reshape(2, h, w)
    return q[1]


def diffseg_refine(image_rgb: np.ndarray, sample_probs: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """sample_probs (N, H, W) per-sample foreground in [0, 1] -> refined probability (H, W).

    K = 3 repeats, each on the mean of H = 4 samples drawn without replacement (all of them
    when the ensemble has fewer than 4), refined by the CRF; the K results are averaged.
    """
    n = sample_probs.shape[0]
    k = min(SAMPLES_PER_REPEAT, n)
    refined = [crf_refine(image_rgb, sample_probs[rng.choice(n, size=k, replace=False)].mean(0))
               for _ in range(REPEATS)]
    return np.mean(refined, axis=0).astype(np.float32)


def diffseg_published_crf(image_rgb: np.ndarray, sample_masks: np.ndarray,
                          rng: np.random.Generator, repeats: int = REPEATS,
                          per_repeat: int = SAMPLES_PER_REPEAT) -> np.ndarray:
    """DiffSeg's own protocol (optimize.py, diffseg.md 6), for comparison with `diffseg_refine`:
    sample_masks (N, H, W) bool (lesion True) -> lesion fraction (H, W) in {0, 1/K, ..., 1}.

    K times: the mean of `per_repeat` samples drawn without replacement, in 0-255 units
    (the samples are saved PNGs there, lesion 255); "probabilities" (avg, 1 - avg) clipped to
    [1e-5, 1], so wherever any chosen sample marks lesion the unary is saturated (the union
    of the samples, not a probability); bilateral kernel before the Gaussian; 5 mean-field
    iterations; the hard argmax; the K label maps averaged. Label 0 (avg) is the lesion.
    The official code draws its subsets with Python's unseeded `random.sample` and resizes
    the whole original image to the mask size even when the mask is a centre crop; here
    `rng` draws the subsets and the image is the one the masks cover.
    """
    dcrf = _densecrf()
    n, h, w = sample_masks.shape
    if image_rgb.shape != (h, w, 3) or image_rgb.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 matching the masks {(h, w)}, "
                         f"got {image_rgb.shape} {image_rgb.dtype}")
    k = min(per_repeat, n)
    lesion = []
    for _ in range(repeats):
        avg = (sample_masks[rng.choice(n, size=k, replace=False)].astype(np.float64)
               * 255).mean(axis=0)
        sm = np.stack((avg, 1 - avg)).reshape(2, -1)
        unary = -np.log(np.clip(sm, _PROB_FLOOR, 1.0)).astype(np.float32)
        crf = dcrf.DenseCRF2D(w, h, 2)
        crf.setUnaryEnergy(np.ascontiguousarray(unary))
        crf.addPairwiseBilateral(sxy=(BILATERAL_SXY, BILATERAL_SXY),
                                 srgb=(BILATERAL_SRGB,) * 3,
                                 rgbim=np.ascontiguousarray(image_rgb), compat=BILATERAL_COMPAT)
        crf.addPairwiseGaussian(sxy=(GAUSSIAN_SXY, GAUSSIAN_SXY), compat=GAUSSIAN_COMPAT)
        labels = np.argmax(np.asarray(crf.inference(ITERATIONS)), axis=0).reshape(h, w)
        lesion.append(labels == 0)
    return np.mean(lesion, axis=0).astype(np.float32)
