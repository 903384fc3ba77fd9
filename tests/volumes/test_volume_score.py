"""#35 item 2: volumes scored with their spacing: Dice, HD95 in mm, volumes in mL, with
known answers (offset slabs and cubes under anisotropic voxels) and a brute-force oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from dsd_fast.metrics import COUNT_KEYS, METRIC_KEYS, surface
from dsd_fast.volumes import score_volume

SPACING = (2.0, 1.0, 0.5)


def _cube(shape, lo, size):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


@pytest.mark.parametrize("axis,shift,mm", [(0, 3, 6.0), (1, 3, 3.0), (2, 3, 1.5)])
def test_offset_slabs_hd95_is_the_offset_in_mm(axis, shift, mm):
    """Two one-voxel-thick slabs `shift` voxels apart along `axis`: every surface voxel is
    exactly shift * spacing[axis] from the other slab."""
    shape = (10, 9, 8)
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    idx = [slice(None)] * 3
    idx[axis] = 2
    gt[tuple(idx)] = True
    idx[axis] = 2 + shift
    pred[tuple(idx)] = True
    s = score_volume(pred, gt, SPACING)
    assert s["hd95_mm"] == pytest.approx(mm)
    assert s["dice"] == 0.0
    n = gt.sum()
    assert s["volume_ml"] == pytest.approx(n * 1.0 / 1000) == s["gt_volume_ml"]


def test_offset_cubes_dice_volume_and_hd95_against_brute_force():
    shape = (14, 12, 12)
    gt = _cube(shape, (2, 2, 2), 6)
    pred = _cube(shape, (4, 3, 2), 6)                  # shifted 2 along x, 1 along y
    s = score_volume(pred.astype(np.uint8), gt, SPACING)
    overlap = 4 * 5 * 6
    assert s["tp"] == overlap
    assert s["dice"] == pytest.approx(2 * overlap / (2 * 216))
    assert s["iou"] == pytest.approx(overlap / (2 * 216 - overlap))
    assert s["volume_ml"] == pytest.approx(216 * 2.0 * 1.0 * 0.5 / 1000)   # 0.216 mL
    assert s["volume_difference_ml"] == pytest.approx(0.0)

    # oracle: every surface voxel's distance to the other surface, in mm, by brute force
    pts = lambda m: np.argwhere(surface(m)) * np.asarray(SPACING)
    d = cdist(pts(pred), pts(gt))
    want = max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))
    assert s["hd95_mm"] == pytest.approx(want) == s["hd95"]
    assert set(METRIC_KEYS + COUNT_KEYS) <= set(s)       # pools with images in summarise
    assert 0 < s["hd95_mm"] <= math.hypot(2 * 2.0, 1 * 1.0) + 1e-9
    # the spacing matters: the same voxels under isotropic 1 mm give another distance
    assert score_volume(pred, gt, (1, 1, 1))["hd95_mm"] != pytest.approx(s["hd95_mm"])


def test_empty_cases_and_bad_input():
    shape = (4, 4, 4)
    empty, cube = np.zeros(shape, bool), _cube(shape, (1, 1, 1), 2)
    both = score_volume(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["hd95_mm"] == 0.0 and both["volume_ml"] == 0.0
    assert score_volume(empty, cube, (1, 1, 1))["hd95_mm"] == math.inf
    with pytest.raises(ValueError, match="spacing must be 3 positive"):
        score_volume(cube, cube, (1, 0, 1))
    with pytest.raises(ValueError, match=r"\(X, Y, Z\) masks"):
        score_volume(cube[0], cube[0], (1, 1, 1))
    with pytest.raises(ValueError, match="same shape"):
        score_volume(cube, cube[:3], (1, 1, 1))
