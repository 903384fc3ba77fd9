"""Binary segmentation metrics, per image and pooled over a test set.

All per-image metrics come from the pixel confusion counts of a predicted mask against the
ground truth (both boolean arrays of the same shape):

    TP = |pred & gt|   FP = |pred & ~gt|   FN = |~pred & gt|   TN = |~pred & ~gt|

    dice              = 2TP / (2TP + FP + FN)
    iou (Jaccard)     = TP / (TP + FP + FN)
    threshold_jaccard = iou if iou >= 0.65 else 0            (ISIC 2018 Task 1 headline)
    sensitivity       = TP / (TP + FN)
    specificity       = TN / (TN + FP)
    accuracy          = (TP + TN) / (TP + FP + FN + TN)

Empty cases follow the ISIC challenge scorer (PyPI `isic-challenge-scoring`), exactly:
    TP + FP + FN = 0 (both masks empty)  -> dice = iou = threshold_jaccard = 1
    TP + FN = 0 (no positives in gt)     -> sensitivity = 1
    TN + FP = 0 (no negatives in gt)     -> specificity = 1

HD95 (see `hd95`) is the MONAI-style 95th-percentile Hausdorff distance in pixels.

`summarise` reports the per-image mean and (population) std of every metric, and the
pooled ("global") metrics from the TP/FP/FN/TN summed over every pixel of the set, which is
what DermoSegDiff reports. Per-image means and pooled values are different numbers: always
say which one a table shows.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

THRESHOLD_JACCARD_CUTOFF = 0.65

# Keys of score_image's dict that are averaged by summarise (the counts are summed instead).
METRIC_KEYS = ("dice", "iou", "threshold_jaccard", "sensitivity", "specificity",
               "accuracy", "hd95")
COUNT_KEYS = ("tp", "fp", "fn", "tn")


# --------------------------------------------------------------------------- inputs

def binarise(mask, threshold: float = 128) -> np.ndarray:
    """A 0-255 mask image -> bool mask, foreground where value > threshold.

    The ISIC scorer binarises ground-truth and predicted PNGs with > 128.
    """
    return np.asarray(mask) > threshold


def _as_mask(x, name: str) -> np.ndarray:
    """bool array, or an integer/float array holding only 0 and 1 -> bool array.

    Anything else is refused rather than silently thresholded: a probability map or a
    0-255 image given here is almost certainly a bug at the call site.
    """
    arr = np.asarray(x)
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); a mask needs at least one pixel")
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)
    raise ValueError(f"{name} must be a binary mask (bool, or numbers that are all 0 or 1), "
                     f"got dtype {arr.dtype} with other values; threshold probabilities "
                     f"(p > 0.5) or 0-255 images (binarise) first")


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {p.shape} "
                         f"and gt {g.shape}")
    return p, g


# --------------------------------------------------------------------------- counts

def confusion(pred, gt) -> tuple[int, int, int, int]:
    """Pixel confusion counts (tp, fp, fn, tn) of `pred` against `gt`, as Python ints."""
    p, g = _pair(pred, gt)
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    tn = p.size - tp - fp - fn
    return tp, fp, fn, tn


# Count-level formulas, shared by the per-image functions and the pooled summary so both
# use the same empty-case conventions.

def _dice(tp, fp, fn) -> float:
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def _iou(tp, fp, fn) -> float:
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def _threshold_jaccard(tp, fp, fn) -> float:
    j = _iou(tp, fp, fn)
    return j if j >= THRESHOLD_JACCARD_CUTOFF else 0.0


def _sensitivity(tp, fn) -> float:
    return 1.0 if tp + fn == 0 else tp / (tp + fn)


def _specificity(tn, fp) -> float:
    return 1.0 if tn + fp == 0 else tn / (tn + fp)


def _accuracy(tp, fp, fn, tn) -> float:
    return (tp + tn) / (tp + fp + fn + tn)


# --------------------------------------------------------------------------- per image

def dice(pred, gt) -> float:
    """2TP / (2TP + FP + FN); 1.0 when both masks are empty."""
    tp, fp, fn, _ = confusion(pred, gt)
    return _dice(tp, fp, fn)


def iou(pred, gt) -> float:
    """Jaccard index TP / (TP + FP + FN); 1.0 when both masks are empty."""
    tp, fp, fn, _ = confusion(pred, gt)
    return _iou(tp, fp, fn)


def threshold_jaccard(pred, gt) -> float:
    """ISIC 2018 Task 1 score: the Jaccard index J if J >= 0.65, else 0.0."""
    tp, fp, fn, _ = confusion(pred, gt)
    return _threshold_jaccard(tp, fp, fn)


def sensitivity(pred, gt) -> float:
    """TP / (TP + FN); 1.0 when gt has no foreground pixel."""
    tp, _, fn, _ = confusion(pred, gt)
    return _sensitivity(tp, fn)


def specificity(pred, gt) -> float:
    """TN / (TN + FP); 1.0 when gt has no background pixel."""
    _, fp, _, tn = confusion(pred, gt)
    return _specificity(tn, fp)


def accuracy(pred, gt) -> float:
    """(TP + TN) / number of pixels."""
    return _accuracy(*confusion(pred, gt))


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool mask: foreground pixels with a 4-connected (face) neighbour
    in the background. Pixels outside the image count as background, so a mask touching the
    image edge has its boundary there (scipy's binary_erosion with border_value=0, as MONAI).
    """
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(from_surf, to_surf, spacing) -> np.ndarray:
    # Distance of every pixel to the nearest pixel of `to_surf` (EDT of its complement),
    # read off at the pixels of `from_surf`.
    dist = ndimage.distance_transform_edt(~to_surf, sampling=spacing)
    return dist[from_surf]


def hd95(pred, gt, spacing=None) -> float:
    """95th-percentile Hausdorff distance, MONAI convention, in pixels (or in `spacing` units).

    surface(X) = boundary pixels of X (see `surface`);
    d(x, Y)    = Euclidean distance from pixel x to the nearest pixel of surface(Y);
    hd95       = max( P95{ d(x, gt)  : x in surface(pred) },
                      P95{ d(y, pred) : y in surface(gt) } )
    with P95 numpy's default (linearly interpolated) percentile. This is MONAI's
    `compute_hausdorff_distance(percentile=95)`: the percentile per direction, then the max.
    (medpy's `hd95` instead pools both directed sets before taking the percentile; its
    numbers are not comparable with these.)

    Empty cases: both masks empty -> 0.0 (nothing to disagree about); exactly one empty ->
    inf (there is no surface to measure to; a missed or hallucinated lesion is infinitely
    wrong, and inf keeps that visible in a mean instead of silently dropping the image).
    """
    p, g = _pair(pred, gt)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 0.0
    if p_any != g_any:
        return math.inf
    sp, sg = surface(p), surface(g)
    d_pg = _directed_distances(sp, sg, spacing)
    d_gp = _directed_distances(sg, sp, spacing)
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def score_image(pred, gt) -> dict:
    """All metrics of one image, plus its confusion counts (for pooling in `summarise`).

    Keys: dice, iou, threshold_jaccard, sensitivity, specificity, accuracy, hd95 (floats)
    and tp, fp, fn, tn (ints).
    """
    p, g = _pair(pred, gt)
    tp, fp, fn, tn = confusion(p, g)
    return {
        "dice": _dice(tp, fp, fn),
        "iou": _iou(tp, fp, fn),
        "threshold_jaccard": _threshold_jaccard(tp, fp, fn),
        "sensitivity": _sensitivity(tp, fn),
        "specificity": _specificity(tn, fp),
        "accuracy": _accuracy(tp, fp, fn, tn),
        "hd95": hd95(p, g),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


# --------------------------------------------------------------------------- data set

def summarise(rows: list[dict]) -> dict:
    """Summarise `score_image` rows over a set of images.

    Returns, for every metric m in METRIC_KEYS:
        m_mean, m_std    mean and population std (ddof = 0) over images. hd95 is inf in
                         any image where exactly one mask is empty, and then so are its
                         mean and std;
    and:
        hd95_n_inf       how many images had hd95 = inf,
        hd95_finite_mean, hd95_finite_std   the same over the images with finite hd95
                         (nan if there are none),
        pooled_dice, pooled_iou, pooled_sensitivity, pooled_specificity, pooled_accuracy
                         the metric of the summed TP/FP/FN/TN over all pixels of all images
                         (DermoSegDiff's "global" numbers; same empty-case conventions),
        tp, fp, fn, tn   the summed counts, n_images.
    """
    if not rows:
        raise ValueError("summarise needs at least one row")
    missing = [k for k in METRIC_KEYS + COUNT_KEYS if k not in rows[0]]
    if missing:
        raise ValueError(f"rows must come from score_image; first row lacks {missing}")
    out: dict = {"n_images": len(rows)}
    for key in METRIC_KEYS:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        with np.errstate(invalid="ignore"):    # std of values containing inf is nan -> inf
            out[f"{key}_mean"] = float(vals.mean())
            out[f"{key}_std"] = math.inf if np.isinf(vals).any() else float(vals.std())
    hd = np.array([r["hd95"] for r in rows], dtype=np.float64)
    finite = hd[np.isfinite(hd)]
    out["hd95_n_inf"] = int(np.isinf(hd).sum())
    out["hd95_finite_mean"] = float(finite.mean()) if finite.size else math.nan
    out["hd95_finite_std"] = float(finite.std()) if finite.size else math.nan

    tp, fp, fn, tn = (sum(int(r[k]) for r in rows) for k in COUNT_KEYS)
    out.update(tp=tp, fp=fp, fn=fn, tn=tn)
    out["pooled_dice"] = _dice(tp, fp, fn)
    out["pooled_iou"] = _iou(tp, fp, fn)
    out["pooled_sensitivity"] = _sensitivity(tp, fn)
    out["pooled_specificity"] = _specificity(tn, fp)
    out["pooled_accuracy"] = _accuracy(tp, fp, fn, tn)
    return out


# --------------------------------------------------------------------------- classes

def class_keys(classes) -> tuple[str, ...]:
    """The per-class columns of `score_classes` rows: m_<class> for every METRIC_KEYS m,
    class by class."""
    return tuple(f"{m}_{c}" for c in classes for m in METRIC_KEYS)


def score_classes(pred_regions, gt_regions, classes) -> dict:
    """Metrics of one image of several classes (classes.py): (K, H, W) bool predicted and
    ground-truth regions (nested classes' regions include the inner ones).

    Keys: every METRIC_KEYS m of each class as m_<class> (and its counts as tp_<class>,
    ...); m itself is the mean over classes (hd95: inf when any class's is), and tp, fp,
    fn, tn are summed over classes, so `summarise` pools over pixels and classes.
    """
    pred_regions, gt_regions = np.asarray(pred_regions), np.asarray(gt_regions)
    if pred_regions.shape != gt_regions.shape or pred_regions.shape[0] != len(classes):
        raise ValueError(f"{len(classes)} classes: prediction regions {pred_regions.shape} "
                         f"and ground truth {gt_regions.shape} must both be (K, H, W) alike")
    per = [score_image(p, g) for p, g in zip(pred_regions, gt_regions)]
    out: dict = {m: float(np.mean([r[m] for r in per])) for m in METRIC_KEYS}
    for k in COUNT_KEYS:
        out[k] = sum(int(r[k]) for r in per)
    for c, r in zip(classes, per):
        for k in METRIC_KEYS + COUNT_KEYS:
            out[f"{k}_{c}"] = r[k]
    return out


def summarise_classes(rows: list[dict], classes) -> dict:
    """{class: summarise of its own metrics} over `score_classes` rows."""
    return {c: summarise([{k: r[f"{k}_{c}"] for k in METRIC_KEYS + COUNT_KEYS}
                          for r in rows]) for c in classes}


__all__ = ["confusion", "dice", "iou", "threshold_jaccard", "sensitivity", "specificity",
           "accuracy", "hd95", "surface", "score_image", "summarise", "binarise",
           "METRIC_KEYS", "COUNT_KEYS", "THRESHOLD_JACCARD_CUTOFF", "score_classes",
           "summarise_classes", "class_keys"]
