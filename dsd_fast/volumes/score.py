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

`evaluate_volume_folders(pred_dir, gt_dir)` is `dsd-fast eval` on NIfTI predictions.
"""
from __future__ import annotations

from pathlib import Path

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


# ----------------------------------------------------------------------------- folders
PRED_SUFFIX = "_mask"            # `dsd-fast segment` writes <case>_mask.nii.gz
GT_NAMES = ("{c}.nii.gz", "{c}.nii", "{c}_seg.nii.gz", "{c}_seg.nii",
            "{c}/{c}_seg.nii.gz", "{c}/{c}_seg.nii")        # the last two: BraTS cases


def volume_predictions(pred_dir) -> dict[str, Path]:
    """{case: file} of the NIfTI predictions in `pred_dir`: the `<case>_mask.nii[.gz]`
    files where there are any (a `dsd-fast segment` folder also holds _prob and
    _uncertainty volumes), else every NIfTI file."""
    from .reader import case_name, is_nifti
    files = sorted(p for p in Path(pred_dir).iterdir() if p.is_file() and is_nifti(p.name))
    masks = [p for p in files if case_name(p).endswith(PRED_SUFFIX)]
    if masks:
        return {case_name(p)[:-len(PRED_SUFFIX)]: p for p in masks}
    return {case_name(p): p for p in files}


def evaluate_volume_folders(pred_dir, gt_dir) -> tuple[list[dict], dict]:
    """Every volume prediction of `pred_dir` scored against its ground truth in `gt_dir`
    (GT_NAMES: `<case>.nii.gz`, `<case>_seg.nii.gz`, or a BraTS case folder's seg), each
    binarised at > 0 (BraTS's tumour classes merged, as the official loader does), with
    the ground truth's voxel spacing -> (rows with "image" = the case, metrics.summarise).
    A prediction on another voxel grid than its ground truth is an error."""
    from ..images import ImageInputError
    from .load import read_volume
    preds = volume_predictions(pred_dir)
    if not preds:
        raise ValueError(f"no NIfTI predictions in {pred_dir}")
    rows = []
    for case, pred_path in preds.items():
        cands = [Path(gt_dir) / n.format(c=case) for n in GT_NAMES]
        gt_path = next((p for p in cands if p.is_file()), None)
        if gt_path is None:
            raise ValueError(f"no ground truth for {case!r} in {gt_dir} (looked for "
                             f"{case}.nii.gz, {case}_seg.nii.gz, {case}/{case}_seg.nii.gz)")
        try:
            pred, gt = read_volume(pred_path), read_volume(gt_path)
        except ImageInputError as e:
            raise ValueError(str(e)) from None
        if pred.shape != gt.shape or not np.allclose(pred.affine, gt.affine, atol=1e-3):
            raise ValueError(f"{pred_path.name}: shape {pred.shape} / affine not those of "
                             f"its ground truth {gt_path.name} {gt.shape}: not one voxel grid")
        rows.append({"image": case, **score_volume(pred.data[..., 0] > 0,
                                                   gt.data[..., 0] > 0, gt.spacing)})
    return rows, metrics.summarise(rows)
