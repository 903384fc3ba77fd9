"""Scoring a segmented volume against its ground truth, in physical units.

    score_volume(mask, gt, spacing) -> {"dice", "iou", "hd95_mm", "volume_ml",
                                        "gt_volume_ml", "volume_difference_ml", ...}

The keys of metrics.score_image are all there (dice, iou, threshold_jaccard, sensitivity,
specificity, accuracy, hd95, tp, fp, fn, tn; `hd95` = `hd95_mm`, in mm), so a volume's row
pools with images' in metrics.summarise.
Dice and IoU from the voxel counts (metrics.py, the same empty-case conventions); HD95 is
metrics.hd95 in 3-D with the voxel spacing: surfaces are voxels with a face neighbour in
the background, distances Euclidean in mm, the 95th percentile per direction then the max
(MONAI's convention; inf when exactly one mask is empty, 0 when both are); volumes in mL are
voxel counts times the voxel volume (mm^3 / 1000).
"""
from __future__ import annotations

import numpy as np

from .. import metrics


def score_volume(mask, gt, spacing) -> dict:
    """`mask`, `gt`: (X, Y, Z) binary (bool, or 0/1 numbers); `spacing`: 3 voxel sizes in
    mm along the same axes."""
    sp = tuple(float(s) for s in spacing)
    m = np.asarray(mask)
    if m.ndim != 3 or len(sp) != 3:
        raise ValueError(f"score_volume takes (X, Y, Z) masks and 3 spacings, got shape "
                         f"{m.shape} and spacing {spacing!r}")
    if not all(s > 0 and np.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be 3 positive sizes in mm, got {spacing!r}")
    tp, fp, fn, tn = metrics.confusion(m, gt)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    volume, gt_volume = (tp + fp) * voxel_ml, (tp + fn) * voxel_ml
    hd95_mm = metrics.hd95(m, gt, spacing=sp)
    return {"dice": metrics._dice(tp, fp, fn), "iou": metrics._iou(tp, fp, fn),
            "threshold_jaccard": metrics._threshold_jaccard(tp, fp, fn),
            "sensitivity": metrics._sensitivity(tp, fn),
            "specificity": metrics._specificity(tn, fp),
            "accuracy": metrics._accuracy(tp, fp, fn, tn),
            "hd95": hd95_mm, "hd95_mm": hd95_mm,
            "volume_ml": volume, "gt_volume_ml": gt_volume,
            "volume_difference_ml": volume - gt_volume,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}
