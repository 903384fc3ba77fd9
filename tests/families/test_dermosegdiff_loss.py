"""Boundary-aware loss: the weight map on hand-built masks."""
import numpy as np
import pytest
import torch

from dsd_fast.families.dermosegdiff.loss import (BOUNDARY_SPREAD, boundary_weight_map,
                                                 canny_zero_thresholds,
                                                 dermosegdiff_loss, time_exponent)


def square_mask(size=32, lo=8, hi=24):
    m = torch.full((1, 1, size, size), -1.0)
    m[..., lo:hi, lo:hi] = 1.0
    return m


def test_square_edge_pixels_match_opencv_canny_layout():
    """cv2.Canny(mask, 0, 0) of a square puts the edge outside on the top/left sides and
    inside on the bottom/right sides, corners cut (checked against OpenCV 4.x)."""
    m = np.zeros((12, 12), np.uint8)
    m[3:9, 2:7] = 1
    e = canny_zero_thresholds(m)
    expected = np.zeros_like(e)
    expected[2, 3:6] = True            # row above the top side, corners excluded
    expected[4:8, 1] = True            # column left of the left side
    expected[8, 2:7] = True            # bottom row of the square itself
    expected[3:9, 6] = True            # rightmost column of the square itself
    expected[3, 2] = True              # top-left corner pixel (diagonal gradient)
    expected[3, 6] = True
    assert np.array_equal(e, expected), e.astype(int)


def test_square_weight_map_is_one_on_the_boundary_and_falls_with_distance():
    x0 = square_mask()
    w = boundary_weight_map(x0, torch.tensor([0]), T=250, gamma=0.25)[0, 0]
    edge = canny_zero_thresholds((x0[0, 0] > 0).numpy())
    assert torch.all(w[torch.from_numpy(edge)] == 1.0)
    # along the middle row, moving from the square's centre out to its left edge, W rises
    row = w[16, 1:16]
    assert torch.all(row[8:].diff() <= 0) or torch.all(row[:8].diff() >= 0)
    assert w.min().item() == pytest.approx(0.0, abs=1e-6)   # the farthest pixel
    assert w[16, 16] < w[16, 9] < 1.0


def test_weight_formula_by_hand():
    """W = minmax(H * 1.1415 - D) ** p(t), D = distance to the nearest edge pixel."""
    from scipy import ndimage
    x0 = square_mask()
    t = 60
    w = boundary_weight_map(x0, torch.tensor([t]), T=250, gamma=0.25)[0, 0].double().numpy()
    edge = canny_zero_thresholds((x0[0, 0] > 0).numpy())
    d = ndimage.distance_transform_edt(~edge)
    a = 32 * BOUNDARY_SPREAD - d
    a = (a - a.min()) / (a.max() - a.min())
    np.testing.assert_allclose(w, a ** ((0.25 * (250 - t) / 250) ** 0.25), rtol=1e-6)


def test_uniform_weight_below_one_percent_foreground():
    x0 = torch.full((2, 1, 32, 32), -1.0)
    x0[0, 0, 5:8, 5:8] = 1.0       # 9 px < 1% of 1024
    x0[1, 0, 0:4, 0:4] = 1.0       # 16 px > 1%: not uniform
    w = boundary_weight_map(x0, torch.tensor([3, 3]), T=250)
    assert torch.all(w[0] == 1.0)
    assert w[1].min() < 1.0


def test_time_exponent_at_the_ends():
    assert time_exponent(0, 250, 0.25) == pytest.approx(0.25 ** 0.25)
    assert time_exponent(249, 250, 0.25) == pytest.approx((0.25 / 250) ** 0.25)
    # near T the map is almost uniform: A ** small power is close to 1 except at A = 0
    x0 = square_mask()
    w_late = boundary_weight_map(x0, torch.tensor([249]), T=250)
    w_early = boundary_weight_map(x0, torch.tensor([0]), T=250)
    assert w_late.mean() > w_early.mean()


def test_loss_combines_mse_and_weighted_mse():
    torch.manual_seed(0)
    x0 = square_mask().repeat(2, 1, 1, 1)
    eps, eps_hat = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    t = torch.tensor([10, 200])
    loss, parts = dermosegdiff_loss(eps_hat, eps, x0, t, 250)
    w = boundary_weight_map(x0, t, 250)
    sq = (eps_hat - eps) ** 2
    assert loss.item() == pytest.approx((sq.mean() + 0.25 * (w * sq).mean()).item(), rel=1e-6)
    assert parts["l2"] == pytest.approx(sq.mean().item(), rel=1e-6)
