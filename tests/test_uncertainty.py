"""Tests for dsd_fast.uncertainty: entropy, GED, STAPLE (SimpleITK as an oracle)."""
import math

import numpy as np
import pytest

from dsd_fast import metrics
from dsd_fast.uncertainty import (entropy_map, ged, pairwise_iou, sample_diversity, staple,
                                  staple_fusion)


# --------------------------------------------------------------------------- entropy

def test_entropy_hand_values():
    p = np.array([[0.0, 1.0, 0.5], [0.25, 0.75, 0.1]])
    h = entropy_map(p)
    h25 = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))        # 0.811278...
    h10 = -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))
    np.testing.assert_allclose(h, [[0.0, 0.0, 1.0], [h25, h25, h10]], rtol=0, atol=1e-15)
    assert h.shape == p.shape and h.dtype == np.float64


def test_entropy_of_sample_mean_and_range_checks():
    samples = np.array([[[1, 0]], [[1, 1]], [[1, 0]], [[1, 1]]], bool)   # p = 1 and 0.5
    np.testing.assert_array_equal(entropy_map(samples.mean(0)), [[0.0, 1.0]])
    for bad in (np.array([1.5]), np.array([-0.1]), np.array([np.nan])):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            entropy_map(bad)


# --------------------------------------------------------------------------- GED

def row_mask(cols, width=4):
    m = np.zeros((2, width), bool)
    m[0, list(cols)] = True
    return m


A = row_mask([0, 1])        # |A| = 2
B = row_mask([1, 2])        # |B| = 2, A & B = 1, A | B = 3: IoU 1/3, d = 2/3
E = np.zeros((2, 4), bool)  # empty


def test_pairwise_iou_hand_and_against_metrics():
    iou = pairwise_iou(np.stack([A, B, E]), np.stack([A, E]))
    np.testing.assert_allclose(iou, [[1, 0], [1 / 3, 0], [0, 1]], rtol=0, atol=1e-15)
    rng = np.random.default_rng(3)
    s = rng.random((6, 9, 9)) < rng.random((6, 1, 1))
    s[0] = False
    s[1] = False                                     # an empty-vs-empty pair
    mat = pairwise_iou(s, s)
    for i in range(6):
        for j in range(6):
            assert mat[i, j] == pytest.approx(metrics.iou(s[i], s[j]), abs=1e-15)


def test_ged_identical_is_zero():
    r = ged(np.stack([A, A, A]), A)
    assert r == {"ged_squared": 0.0, "ged": 0.0, "cross": 0.0, "sample_diversity": 0.0,
                 "annotation_diversity": 0.0}


def test_ged_one_sample_one_annotation():
    r = ged(A[None], B[None])                        # GED^2 = 2 d(A, B) = 4/3
    assert r["cross"] == pytest.approx(2 / 3, abs=1e-15)
    assert r["ged_squared"] == pytest.approx(4 / 3, abs=1e-15)
    assert r["ged"] == pytest.approx(math.sqrt(4 / 3), abs=1e-15)
    assert r["sample_diversity"] == 0.0 and r["annotation_diversity"] == 0.0


def test_ged_full_matrices_with_diagonals():
    # samples {A, B}, annotation A: cross = (0 + 2/3) / 2; E[d(S, S')] over the full 2 x 2
    # matrix = (0 + 2/3 + 2/3 + 0) / 4 = 1/3; GED^2 = 2/3 - 1/3 - 0 = 1/3.
    r = ged(np.stack([A, B]), A)
    assert r["cross"] == pytest.approx(1 / 3, abs=1e-15)
    assert r["sample_diversity"] == pytest.approx(1 / 3, abs=1e-15)
    assert r["ged_squared"] == pytest.approx(1 / 3, abs=1e-15)
    # several annotations: sample A, annotations {A, B}: 2 * 1/3 - 0 - 1/3 = 1/3.
    r = ged(A[None], np.stack([A, B]))
    assert r["annotation_diversity"] == pytest.approx(1 / 3, abs=1e-15)
    assert r["ged_squared"] == pytest.approx(1 / 3, abs=1e-15)


def test_ged_empty_pair_convention():
    assert ged(E[None], E)["ged_squared"] == 0.0          # empty vs empty: IoU 1, d 0
    assert ged(E[None], A)["ged_squared"] == 2.0          # empty vs non-empty: d 1
    r = ged(np.stack([E, A]), A)                          # cross 1/2, diversity 1/2
    assert r["cross"] == 0.5 and r["sample_diversity"] == 0.5
    assert r["ged_squared"] == pytest.approx(0.5, abs=1e-15)
    assert all(np.isfinite(v) for v in ged(np.stack([E, E]), np.stack([E, A])).values())


def test_sample_diversity_hand_and_ged_sqrt():
    # off-diagonal d: A-B 2/3, A-E 1, B-E 1 (each twice), 9 entries: (16/3) / 9 = 16/27
    assert sample_diversity(np.stack([A, B, E])) == pytest.approx(16 / 27, abs=1e-15)
    assert sample_diversity(np.stack([B, B])) == 0.0
    rng = np.random.default_rng(11)
    for _ in range(5):
        s = rng.random((4, 8, 8)) < 0.5
        y = rng.random((2, 8, 8)) < 0.5
        r = ged(s, y)
        assert r["sample_diversity"] == pytest.approx(sample_diversity(s), abs=1e-15)
        assert r["ged_squared"] == pytest.approx(
            2 * r["cross"] - r["sample_diversity"] - r["annotation_diversity"], abs=1e-15)
        assert r["ged"] == pytest.approx(math.sqrt(max(0.0, r["ged_squared"])), abs=1e-15)


def test_ged_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(3, 4\)"):
        ged(A[None], np.zeros((3, 4), bool))


# --------------------------------------------------------------------------- STAPLE

SENS = np.array([0.95, 0.90, 0.85, 0.80, 0.70])
SPEC = np.array([0.98, 0.95, 0.90, 0.97, 0.85])


def disc_raters(seed=0, sens=SENS, spec=SPEC, size=64):
    """A disc as the truth, and one rater per (sens, spec): foreground pixels kept with
    probability sens, background pixels kept with probability spec, independently."""
    yy, xx = np.mgrid[:size, :size]
    truth = (yy - size / 2) ** 2 + (xx - size / 2 + 2) ** 2 <= (0.28 * size) ** 2
    rng = np.random.default_rng(seed)
    raters = []
    for s, q in zip(sens, spec):
        u = rng.random(truth.shape)
        raters.append(np.where(truth, u < s, u >= q))
    return truth, np.array(raters)


def product_e_step(d, p, q, prior):
    """Independent E-step, straight from Warfield's formula in product form."""
    dd = d.reshape(len(d), -1).astype(float)
    a = prior * np.prod(np.where(dd == 1, p[:, None], 1 - p[:, None]), axis=0)
    b = (1 - prior) * np.prod(np.where(dd == 1, 1 - q[:, None], q[:, None]), axis=0)
    return (a / (a + b)).reshape(d.shape[1:])


def test_staple_unanimous_raters():
    m = np.zeros((8, 8), bool)
    m[2:6, 3:7] = True
    w, p, q = staple(np.stack([m, m, m]))
    np.testing.assert_array_equal(w, m.astype(float))
    np.testing.assert_array_equal(p, 1.0)
    np.testing.assert_array_equal(q, 1.0)
    np.testing.assert_array_equal(staple_fusion(np.stack([m, m, m])), m)


def test_staple_all_empty():
    w, p, q = staple(np.zeros((3, 5, 5), bool))
    np.testing.assert_array_equal(w, 0.0)
    np.testing.assert_array_equal(p, 1.0)            # no foreground evidence: convention 1
    np.testing.assert_array_equal(q, 1.0)


def test_staple_recovers_known_rates_and_truth():
    # 96 x 96: ~2300 disc pixels, so the sampling error of a sensitivity is <= 0.01 (1 sd).
    truth, d = disc_raters(seed=1, size=96)
    w, p, q = staple(d)
    assert w.shape == truth.shape and w.dtype == np.float64
    np.testing.assert_allclose(p, SENS, atol=0.03)
    np.testing.assert_allclose(q, SPEC, atol=0.015)
    fused = staple_fusion(d)
    np.testing.assert_array_equal(fused, w > 0.5)
    assert metrics.dice(fused, truth) > 0.97
    assert metrics.dice(fused, truth) > metrics.dice(d[0], truth)   # better than best rater


def test_staple_fixed_point_equations():
    truth, d = disc_raters(seed=2)
    w, p, q = staple(d, max_iter=1000)
    prior = d.mean()
    # E-step: the returned posterior is exactly the one the returned rates give.
    np.testing.assert_allclose(w, product_e_step(d, p, q, prior), rtol=0, atol=1e-12)
    # M-step: at convergence the rates are (to the tolerance) re-estimated from w.
    dd = d.reshape(len(d), -1).astype(float)
    wf = w.reshape(-1)
    np.testing.assert_allclose(dd @ wf / wf.sum(), p, atol=1e-6)
    np.testing.assert_allclose((1 - dd) @ (1 - wf) / (1 - wf).sum(), q, atol=1e-6)


def test_staple_rater_permutation():
    _, d = disc_raters(seed=3)
    perm = [3, 0, 4, 1, 2]
    w, p, q = staple(d)
    w2, p2, q2 = staple(d[perm])
    np.testing.assert_allclose(w2, w, atol=1e-12)
    np.testing.assert_allclose(p2, p[perm], atol=1e-12)
    np.testing.assert_allclose(q2, q[perm], atol=1e-12)


def test_staple_many_raters_no_underflow():
    # 1200 raters: products of 1200 rates near 0.7 underflow to 0 in product form (0/0);
    # the log-space E-step keeps them.
    truth, d = disc_raters(seed=4, sens=np.full(1200, 0.7), spec=np.full(1200, 0.7), size=16)
    w, p, q = staple(d, max_iter=20)
    assert np.isfinite(w).all() and np.isfinite(p).all() and np.isfinite(q).all()
    np.testing.assert_array_equal(w > 0.5, truth)


def test_staple_input_checks():
    with pytest.raises(ValueError, match="binary"):
        staple(np.full((2, 3, 3), 0.4))
    with pytest.raises(ValueError, match="max_iter"):
        staple(np.zeros((2, 3, 3), bool), max_iter=0)
    with pytest.raises(ValueError, match="prior"):
        staple(np.zeros((2, 3, 3), bool), prior=1.5)


# --------------------------------------------------------------------------- SimpleITK oracle

def sitk_staple(d, max_iter, confidence_weight=1.0):
    sitk = pytest.importorskip("SimpleITK",
                               reason="STAPLE oracle needs SimpleITK (pip install SimpleITK)")
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    f.SetConfidenceWeight(confidence_weight)
    f.SetMaximumIterations(max_iter)
    out = f.Execute([sitk.GetImageFromArray(x.astype(np.uint8)) for x in d])
    return (sitk.GetArrayFromImage(out), np.array(f.GetSensitivity()),
            np.array(f.GetSpecificity()), f.GetElapsedIterations())


@pytest.mark.parametrize("seed", [0, 5])
def test_staple_matches_simpleitk(seed):
    _, d = disc_raters(seed=seed)
    w_ref, p_ref, q_ref, iters = sitk_staple(d, max_iter=500)
    assert iters < 499                           # ITK converged (did not hit the cap)
    w, p, q = staple(d, max_iter=500)            # same stopping rule: |change| <= 1e-7
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-10)


def test_staple_matches_simpleitk_one_iteration_and_noisy_raters():
    # One iteration: pins down the update order (init W = vote fraction, M-step, E-step).
    _, d = disc_raters(seed=6)
    w_ref, p_ref, q_ref, _ = sitk_staple(d, max_iter=1)
    w, p, q = staple(d, max_iter=1)
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-12)
    # Pure-noise raters with no shared truth: slow EM, still the same answer at a fixed cap.
    rng = np.random.default_rng(0)
    noise = rng.random((3, 12, 12)) < 0.4
    w_ref, p_ref, q_ref, _ = sitk_staple(noise, max_iter=60)
    w, p, q = staple(noise, max_iter=60)
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-10)


def test_staple_prior_matches_simpleitk_confidence_weight():
    # ITK's prior is mean(decisions) * ConfidenceWeight: pass the same number as `prior`.
    _, d = disc_raters(seed=7)
    w_ref, p_ref, q_ref, _ = sitk_staple(d, max_iter=500, confidence_weight=1.5)
    w, p, q = staple(d, max_iter=500, prior=1.5 * d.mean())
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-10)


def test_staple_perfect_rater_whose_rate_rounds_above_one():
    # Regression: a rater that marks only true foreground has specificity 1, which the
    # M-step's float sums can return as 1 + 4e-15; log1p(-q) was then NaN and every pixel
    # that rater marks (here ~100 pixels all six raters agree on) fell back to the prior.
    # Found on a PH2 image where STAPLE gave Dice 0.16 against 0.95 for the mean.
    rng = np.random.default_rng(0)
    size = int(rng.integers(8, 40))
    truth = np.zeros((size, size), bool)
    r0 = int(rng.integers(1, size // 2))
    truth[r0:r0 + size // 3, r0:r0 + size // 3] = True
    raters = [truth ^ (rng.random(truth.shape) < 0.03) for _ in range(4)]
    raters.append(truth & (rng.random(truth.shape) < 0.9))      # conservative: specificity 1
    raters.append(truth | (rng.random(truth.shape) < 0.2))      # generous: sensitivity 1
    d = np.stack(raters)
    w, p, q = staple(d)
    assert ((p >= 0) & (p <= 1)).all() and ((q >= 0) & (q <= 1)).all()
    assert q.max() == 1.0
    unanimous, none = d.all(0), ~d.any(0)
    assert unanimous.sum() > 50
    assert (w[unanimous] > 0.99).all() and (w[none] < 0.01).all()
    assert metrics.dice(w > 0.5, truth) > 0.95
    w_ref, p_ref, q_ref, _ = sitk_staple(d, max_iter=100)     # ITK does not hit the NaN
    np.testing.assert_array_equal(w > 0.5, w_ref > 0.5)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-10)


def test_error_rates_by_uncertainty_counts_errors_where_the_std_is_high():
    from dsd_fast.uncertainty import error_rates_by_uncertainty
    truth = np.zeros((10, 10), bool)
    mask = truth.copy()
    mask[0, :5] = True                       # 5 errors
    std = np.zeros((10, 10))
    std[0, :] = 1.0                          # the top 10% (10 pixels) holds them all
    r = error_rates_by_uncertainty([mask], [truth], [std])
    assert r == {"error_rate_top": 0.5, "error_rate_rest": 0.0, "images": 1}
    flat = error_rates_by_uncertainty([mask], [truth], [np.ones((10, 10))])   # no ranking
    assert flat["images"] == 0
