"""Tests for dsd_fast.metrics: hand-computed cases, the ISIC scorer as an oracle, HD95."""
import math

import numpy as np
import pytest

from dsd_fast import metrics as M


def masks(*rows):
    return np.array(rows, dtype=bool)


# A 2 x 3 example counted by hand:
#   pred 1 1 0      gt 1 0 0     TP: (0,0) (1,1)   FP: (0,1)   FN: (1,2)   TN: (1,0) (0,2)
#        0 1 0         0 1 1
PRED = masks([1, 1, 0], [0, 1, 0])
GT = masks([1, 0, 0], [0, 1, 1])


# --------------------------------------------------------------------------- counts, formulas

def test_confusion_hand_counts():
    assert M.confusion(PRED, GT) == (2, 1, 1, 2)
    assert all(type(c) is int for c in M.confusion(PRED, GT))


def test_metrics_hand_values():
    assert M.dice(PRED, GT) == pytest.approx(2 / 3, abs=1e-15)       # 4 / (4 + 1 + 1)
    assert M.iou(PRED, GT) == pytest.approx(0.5, abs=1e-15)           # 2 / 4
    assert M.threshold_jaccard(PRED, GT) == 0.0                       # 0.5 < 0.65
    assert M.sensitivity(PRED, GT) == pytest.approx(2 / 3, abs=1e-15)
    assert M.specificity(PRED, GT) == pytest.approx(2 / 3, abs=1e-15)
    assert M.accuracy(PRED, GT) == pytest.approx(4 / 6, abs=1e-15)


def test_threshold_jaccard_at_and_below_cutoff():
    gt = np.zeros(20, bool)
    gt[:13] = True
    pred = np.ones(20, bool)                    # TP 13, FP 7, FN 0 -> J = 13/20 = 0.65 exactly
    assert M.iou(pred, gt) == 0.65
    assert M.threshold_jaccard(pred, gt) == 0.65                    # J >= 0.65 is kept
    pred21, gt21 = np.ones(21, bool), np.r_[gt, False]              # J = 13/21 < 0.65
    assert M.iou(pred21, gt21) == pytest.approx(13 / 21, abs=1e-15)
    assert M.threshold_jaccard(pred21, gt21) == 0.0


# --------------------------------------------------------------------------- empty conventions

def test_both_empty():
    z = np.zeros((4, 5), bool)
    r = M.score_image(z, z)
    assert (r["dice"], r["iou"], r["threshold_jaccard"]) == (1.0, 1.0, 1.0)
    assert (r["sensitivity"], r["specificity"], r["accuracy"]) == (1.0, 1.0, 1.0)
    assert r["hd95"] == 0.0
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (0, 0, 0, 20)


def test_pred_empty_gt_not():
    gt = np.zeros((4, 5), bool)
    gt[1, 1:3] = True
    r = M.score_image(np.zeros_like(gt), gt)
    assert (r["dice"], r["iou"], r["threshold_jaccard"]) == (0.0, 0.0, 0.0)
    assert r["sensitivity"] == 0.0 and r["specificity"] == 1.0
    assert r["accuracy"] == pytest.approx(18 / 20, abs=1e-15)
    assert r["hd95"] == math.inf


def test_gt_empty_pred_not_sensitivity_is_one():
    pred = np.zeros((4, 5), bool)
    pred[0, :2] = True
    r = M.score_image(pred, np.zeros_like(pred))
    assert r["sensitivity"] == 1.0                  # no positives: a freebie (ISIC)
    assert r["specificity"] == pytest.approx(18 / 20, abs=1e-15)
    assert r["dice"] == 0.0 and r["iou"] == 0.0
    assert r["hd95"] == math.inf


def test_no_negatives_specificity_is_one():
    full = np.ones((3, 3), bool)
    r = M.score_image(np.zeros_like(full), full)
    assert r["specificity"] == 1.0                  # no negatives: a freebie (ISIC)
    assert r["sensitivity"] == 0.0 and r["accuracy"] == 0.0
    r = M.score_image(full, full)
    assert (r["dice"], r["iou"], r["sensitivity"], r["specificity"], r["hd95"]) == \
        (1.0, 1.0, 1.0, 1.0, 0.0)


# --------------------------------------------------------------------------- input checks

def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(2, 3\).*gt \(3, 2\)"):
        M.dice(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        M.score_image(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def test_non_binary_refused_and_01_numbers_accepted():
    with pytest.raises(ValueError, match="binary mask"):
        M.dice(np.full((2, 2), 0.7), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="binary mask"):
        M.iou(np.zeros((2, 2), bool), np.full((2, 2), 255, np.uint8))
    with pytest.raises(ValueError, match="empty"):
        M.dice(np.zeros((0, 3), bool), np.zeros((0, 3), bool))
    assert M.confusion(PRED.astype(np.uint8), GT.astype(np.float32)) == (2, 1, 1, 2)


def test_binarise_uses_strictly_greater_than_128():
    img = np.array([[0, 128], [129, 255]], np.uint8)
    np.testing.assert_array_equal(M.binarise(img), [[False, False], [True, True]])


# --------------------------------------------------------------------------- HD95

def brute_force_hd95(pred, gt):
    """Independent oracle: boundary by explicit 4-neighbour check, all-pairs distances."""
    def edge_coords(m):
        pad = np.pad(m, 1, constant_values=False)
        inner = pad[1:-1, 1:-1]
        bg_nb = ~pad[:-2, 1:-1] | ~pad[2:, 1:-1] | ~pad[1:-1, :-2] | ~pad[1:-1, 2:]
        return np.argwhere(inner & bg_nb).astype(float)
    a, b = edge_coords(pred), edge_coords(gt)
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(dist.min(1), 95), np.percentile(dist.min(0), 95))


def test_hd95_identical_is_zero():
    m = np.zeros((20, 20), bool)
    m[4:12, 5:15] = True
    assert M.hd95(m, m) == 0.0


def test_hd95_single_pixels_3_4_5():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[1, 1] = True
    b[4, 5] = True
    assert M.hd95(a, b) == 5.0
    assert M.hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(6 ** 2 + 4 ** 2), abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_hd95_line_offset_by_k(k):
    # Two horizontal segments k rows apart: every boundary pixel is exactly k from the other.
    a = np.zeros((12, 20), bool)
    b = np.zeros((12, 20), bool)
    a[2, 3:17] = True
    b[2 + k, 3:17] = True
    assert M.hd95(a, b) == float(k)


def test_hd95_concentric_squares_is_per_direction_percentile_then_max():
    # gt: 21 x 21 square, pred: 11 x 11 square, same centre. pred -> gt: all 40 boundary
    # pixels are 5 away. gt -> pred (80 pixels): 44 at 5, then 8 each at sqrt(26), sqrt(29),
    # sqrt(34), sqrt(41) and the 4 corners at sqrt(50). P95 = sorted[75] + 0.05 *
    # (sorted[76] - sorted[75]) = sqrt(41) + 0.05 (sqrt(50) - sqrt(41)).
    gt = np.zeros((31, 31), bool)
    pred = np.zeros((31, 31), bool)
    gt[5:26, 5:26] = True
    pred[10:21, 10:21] = True
    expected = math.sqrt(41) + 0.05 * (math.sqrt(50) - math.sqrt(41))
    assert M.hd95(pred, gt) == pytest.approx(expected, abs=1e-12)
    assert M.hd95(gt, pred) == pytest.approx(expected, abs=1e-12)
    # medpy's pooled convention (one percentile over all 120 distances) gives sqrt(41): the
    # value above shows this module is not using it.
    assert abs(expected - math.sqrt(41)) > 0.03


@pytest.mark.parametrize("k", [1, 3, 6])
def test_hd95_squares_offset_by_k_matches_brute_force(k):
    a = np.zeros((30, 30), bool)
    b = np.zeros((30, 30), bool)
    a[8:18, 8:18] = True
    b[8:18, 8 + k:18 + k] = True
    assert M.hd95(a, b) == pytest.approx(brute_force_hd95(a, b), abs=1e-12)
    b2 = np.zeros_like(a)
    b2[8 + k:18 + k, 8 + k:18 + k] = True                       # diagonal offset
    assert M.hd95(a, b2) == pytest.approx(brute_force_hd95(a, b2), abs=1e-12)


def test_hd95_random_blobs_match_brute_force():
    from scipy import ndimage
    rng = np.random.default_rng(7)
    for _ in range(10):
        a = ndimage.binary_opening(rng.random((24, 24)) < 0.55)
        b = ndimage.binary_opening(rng.random((24, 24)) < 0.55)
        assert a.any() and b.any()
        assert M.hd95(a, b) == pytest.approx(brute_force_hd95(a, b), abs=1e-12)


def test_hd95_mask_touching_image_border():
    # The image edge is a boundary (pixels outside count as background). full 9 x 9 vs the
    # 7 x 7 square inside it: full's ring has 28 pixels 1 away and 4 corners sqrt(2) away;
    # P95 over 32 sorted values is at index 29.45, among the corners -> sqrt(2). The inner
    # ring is 1 away from full's ring everywhere.
    full = np.ones((9, 9), bool)
    inner = np.zeros((9, 9), bool)
    inner[1:8, 1:8] = True
    assert M.hd95(full, inner) == pytest.approx(math.sqrt(2), abs=1e-12)
    assert M.hd95(full, inner) == pytest.approx(brute_force_hd95(full, inner), abs=1e-12)


# --------------------------------------------------------------------------- score, summary

def test_score_image_keys_and_consistency():
    r = M.score_image(PRED, GT)
    assert set(r) == set(M.METRIC_KEYS) | set(M.COUNT_KEYS)
    assert r["dice"] == M.dice(PRED, GT) and r["hd95"] == M.hd95(PRED, GT)


def _two_images():
    # A: gt a 2x2 block at cols 0-1, pred the block shifted one column right:
    #    TP 2, FP 2, FN 2, TN 10; dice 1/2, iou 1/3; hd95 1 (distances {0, 0, 1, 1}).
    # B: both empty: TP FP FN 0, TN 16; dice = iou = 1, hd95 0.
    gt_a = np.zeros((4, 4), bool)
    gt_a[0:2, 0:2] = True
    pred_a = np.zeros((4, 4), bool)
    pred_a[0:2, 1:3] = True
    z = np.zeros((4, 4), bool)
    return [M.score_image(pred_a, gt_a), M.score_image(z, z)]


def test_summarise_hand_values():
    rows = _two_images()
    assert rows[0]["hd95"] == 1.0
    s = M.summarise(rows)
    assert s["n_images"] == 2
    assert s["dice_mean"] == pytest.approx(0.75, abs=1e-15)
    assert s["dice_std"] == pytest.approx(0.25, abs=1e-15)            # population std
    assert s["iou_mean"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-15)
    assert s["threshold_jaccard_mean"] == pytest.approx(0.5, abs=1e-15)   # (0 + 1) / 2
    assert s["hd95_mean"] == 0.5 and s["hd95_std"] == 0.5 and s["hd95_n_inf"] == 0
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (2, 2, 2, 26)
    # Pooled: the empty image adds only TN, so pooled Dice is A's Dice, not the mean.
    assert s["pooled_dice"] == pytest.approx(0.5, abs=1e-15)
    assert s["pooled_iou"] == pytest.approx(1 / 3, abs=1e-15)
    assert s["pooled_sensitivity"] == pytest.approx(0.5, abs=1e-15)
    assert s["pooled_specificity"] == pytest.approx(26 / 28, abs=1e-15)
    assert s["pooled_accuracy"] == pytest.approx(28 / 32, abs=1e-15)


def test_summarise_infinite_hd95():
    rows = _two_images()
    gt = np.zeros((4, 4), bool)
    gt[2, 2] = True
    rows.append(M.score_image(np.zeros_like(gt), gt))                 # missed lesion
    s = M.summarise(rows)
    assert s["hd95_mean"] == math.inf and s["hd95_std"] == math.inf
    assert s["hd95_n_inf"] == 1
    assert s["hd95_finite_mean"] == 0.5 and s["hd95_finite_std"] == 0.5
    assert s["dice_mean"] == pytest.approx(0.5, abs=1e-15)            # (0.5 + 1 + 0) / 3


def test_summarise_rejects_bad_rows():
    with pytest.raises(ValueError):
        M.summarise([])
    with pytest.raises(ValueError, match="score_image"):
        M.summarise([{"dice": 1.0}])


# --------------------------------------------------------------------------- ISIC oracle

def _oracle_cases():
    rng = np.random.default_rng(2018)
    cases = []
    for density_p, density_g in [(0.1, 0.1), (0.5, 0.5), (0.9, 0.8), (0.3, 0.6), (0.02, 0.05)]:
        for _ in range(6):
            cases.append((rng.random((17, 23)) < density_p, rng.random((17, 23)) < density_g))
    # Correlated pairs (gt plus a few flips) give Jaccard values around the 0.65 cutoff.
    for flip in (0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4):
        gt = np.zeros((20, 20), bool)
        gt[4:16, 3:15] = True
        pred = gt ^ (rng.random(gt.shape) < flip)
        cases.append((pred, gt))
    z, o = np.zeros((6, 7), bool), np.ones((6, 7), bool)
    one = z.copy()
    one[2, 3] = True
    other = z.copy()
    other[4, 1] = True
    cases += [(z, z), (o, o), (z, o), (o, z), (one, z), (z, one), (one, one), (one, other),
              (o, one), (one, o)]
    gt = np.zeros(20, bool)
    gt[:13] = True
    cases.append((np.ones(20, bool), gt))                               # J = 0.65 exactly
    return cases


def test_against_isic_challenge_scoring():
    isic = pytest.importorskip(
        "isic_challenge_scoring.metrics",
        reason="oracle needs isic-challenge-scoring==5.6.0 (pip install isic-challenge-scoring)")
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix
    cases = _oracle_cases()
    assert len(cases) >= 50
    seen_cut = set()
    for pred, gt in cases:
        cm = create_binary_confusion_matrix(truth_binary_values=gt,
                                            prediction_binary_values=pred)
        assert M.confusion(pred, gt) == (cm["TP"], cm["FP"], cm["FN"], cm["TN"])
        r = M.score_image(pred, gt)
        expected = {
            "dice": isic.binary_dice(cm),
            "iou": isic.binary_jaccard(cm),
            "threshold_jaccard": isic.binary_threshold_jaccard(cm),
            "sensitivity": isic.binary_sensitivity(cm),
            "specificity": isic.binary_specificity(cm),
            "accuracy": isic.binary_accuracy(cm),
        }
        for key, value in expected.items():
            assert r[key] == pytest.approx(float(value), rel=1e-12, abs=1e-15), (key, pred, gt)
        seen_cut.add(r["threshold_jaccard"] == 0.0 and r["iou"] > 0)
    assert seen_cut == {True, False}        # cases on both sides of the 0.65 cutoff
