"""`dsd-fast train --roi-crops P` (augment.roi_crop): pairs cropped to the square around their
mask, as segment(crop="zoom")'s second pass crops the box around the first pass's mask; 0
draws nothing, so training stays what it was."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dsd_fast.train import TrainOptions, Trainer
from dsd_fast.train.augment import ROI_HOLD, ROI_MARGIN, roi_boxes, roi_crop
from dsd_fast.train.data import Sample
from dsd_fast.train.sources import MixedBatches

from test_loop import make_disc_dataset


def _held(boxes, s=64):
    """(B, 1, s, s) masks with one rectangle each (y0, y1, x0, x1 in held pixels)."""
    m = torch.zeros(len(boxes), 1, s, s)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        m[i, 0, y0:y1, x0:x1] = 1
    return m


RECTS = [(10, 20, 12, 30), (30, 50, 30, 40), (5, 15, 40, 60), (40, 52, 8, 20),
         (20, 30, 20, 30), (26, 38, 44, 56)]
SIZES = torch.tensor([[300, 400]] * len(RECTS))         # original (H, W): not square


def test_each_box_holds_its_mask_square_in_original_pixels_with_a_random_margin():
    masks = _held(RECTS)
    boxes = roi_boxes(masks, SIZES, 1.0, torch.Generator().manual_seed(0), min_side=16)
    sides = []
    for (y0, y1, x0, x1), box in zip(RECTS, boxes):
        # the held rectangle in original pixels (300 / 64 rows, 400 / 64 columns per pixel)
        bbox = (math.floor(y0 * 300 / 64), math.floor(x0 * 400 / 64),
                math.ceil(y1 * 300 / 64), math.ceil(x1 * 400 / 64))
        assert box.contains(bbox), (bbox, box)
        assert 0 <= box.top and box.top + box.height <= 300
        assert 0 <= box.left and box.left + box.width <= 400
        assert box.height == box.width                   # none reaches the image's side
        extent = max(bbox[2] - bbox[0], bbox[3] - bbox[1])
        lo, hi = (1 + 2 * m for m in ROI_MARGIN)
        assert lo * extent - 1 <= box.height <= hi * extent + 1
        sides.append(box.height / extent)
    assert len({round(s, 3) for s in sides}) == len(sides)          # margins are drawn


def test_crops_zoom_onto_the_mask_where_the_box_says():
    s = 64
    masks = _held(RECTS, s)
    images = masks.expand(-1, 3, -1, -1).clone()          # the picture is the mask: aligned
    gen = torch.Generator().manual_seed(0)
    boxes = roi_boxes(masks, SIZES, 1.0, torch.Generator().manual_seed(0), min_side=16)
    img, msk = roi_crop(images, masks, SIZES, 1.0, gen, min_side=16)
    assert img.shape == images.shape and msk.shape == masks.shape
    assert set(msk.unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal((img[:, 0] > 0.5).numpy(), msk[:, 0].bool().numpy())
    for (y0, y1, x0, x1), box, out in zip(RECTS, boxes, msk[:, 0]):
        assert out.mean() > 2 * ((y1 - y0) * (x1 - x0)) / s ** 2   # zoomed in
        rows = torch.nonzero(out.any(1)).flatten()
        cols = torch.nonzero(out.any(0)).flatten()
        # the rectangle's edges in the crop's frame: (edge in original - box start) / side
        want = [(y0 * 300 / 64 - box.top) / box.height * s,
                (y1 * 300 / 64 - box.top) / box.height * s,
                (x0 * 400 / 64 - box.left) / box.width * s,
                (x1 * 400 / 64 - box.left) / box.width * s]
        got = [rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1]
        np.testing.assert_allclose(got, want, atol=1.5)


def test_a_share_of_pairs_is_cropped_and_the_rest_left_as_they_were():
    masks = _held(RECTS * 4)
    sizes = SIZES.repeat(4, 1)
    images = torch.rand(masks.shape[0], 3, 64, 64, generator=torch.Generator().manual_seed(1))
    img, msk = roi_crop(images, masks, sizes, 0.5, torch.Generator().manual_seed(2), 16)
    same = [torch.equal(a, b) for a, b in zip(img, images)]
    assert 0 < sum(same) < len(same)
    for keep, a, b in zip(same, msk, masks):
        assert keep == torch.equal(a, b)
    # an empty mask has nothing to zoom on: left alone
    empty = torch.zeros(2, 1, 64, 64)
    out = roi_crop(images[:2], empty, sizes[:2], 1.0, torch.Generator().manual_seed(0), 16)
    assert torch.equal(out[0], images[:2]) and torch.equal(out[1], empty)


def test_no_roi_crops_draw_nothing_and_change_nothing():
    masks, images = _held(RECTS), torch.rand(len(RECTS), 3, 64, 64)
    gen = torch.Generator().manual_seed(5)
    before = gen.get_state()
    img, msk = roi_crop(images, masks, SIZES, 0.0, gen, 16)
    assert img is images and msk is masks and torch.equal(gen.get_state(), before)
    # MixedBatches with roi_crops=0: the batches of before (draws, then resize / augment)
    samples = [Sample(f"s{i}", images[i], masks[i], masks[i, 0].bool(), (300, 400))
               for i in range(len(RECTS))]
    a = MixedBatches([samples], [1.0], 64, 4, torch.Generator().manual_seed(3), "none")
    b = MixedBatches([samples], [1.0], 64, 4, torch.Generator().manual_seed(3), "none",
                     roi_crops=0.0)
    g = torch.Generator().manual_seed(3)
    torch.multinomial(torch.ones(1, dtype=torch.float64), 4, replacement=True, generator=g)
    idx = torch.randint(0, len(samples), (4,), generator=g)
    want = ((images * 255).round().to(torch.uint8)[idx].float() / 255, masks[idx] * 2 - 1)
    for batches in (a, b):
        got = batches.next()
        from dsd_fast.preprocess import minmax_normalise
        assert torch.equal(got[0], minmax_normalise(want[0])) and torch.equal(got[1], want[1])


# ----------------------------------------------------------------------------- the run

def _options(root, out, **kw):
    return TrainOptions(image_dir=str(root / "images"), mask_dir=str(root / "masks"),
                        out_dir=str(out), train_ids=str(root / "train.txt"),
                        val_ids=str(root / "val.txt"), config="tiny_ff", batch_size=2,
                        total_steps=2, val_every=2, val_steps=1, val_ensemble=1,
                        checkpoint_every=1, log_every=1, **kw)


def test_roi_crops_are_checked_held_larger_and_recorded(tmp_path):
    root = make_disc_dataset(tmp_path / "data", radii=(3, 6), noise=False)
    for bad in (-0.1, 1.5, True, "half", float("nan")):
        with pytest.raises(ValueError, match="roi_crops"):
            _options(root, tmp_path / "x", roi_crops=bad)
    plain = Trainer(_options(root, tmp_path / "plain"), log=lambda *a: None)
    assert plain.batches.images.shape[-1] == 16                  # PairBatches, as before
    zoom = Trainer(_options(root, tmp_path / "zoom", roi_crops=1.0), log=lambda *a: None)
    assert zoom.batches.images[0].shape[-1] == ROI_HOLD * 16 and zoom.batches.roi_crops == 1
    image, x0 = zoom.batches.next()
    assert image.shape == (2, 3, 16, 16) and x0.shape == (2, 1, 16, 16)
    # the zoomed masks fill more of the frame than the whole images': a box of 16 (the
    # model's size, more than 1.9 x any disc) of 24 pixels, (24 / 16)^2 = 2.25 x the share
    zoomed = torch.cat([zoom.batches.next()[1] for _ in range(8)]) > 0
    whole = zoom.batches.masks[0].float().mean()
    assert zoomed.float().mean() > 1.8 * whole


def test_the_command_line_takes_roi_crops_and_the_run_records_them(tmp_path):
    from dsd_fast.cli import main
    root = make_disc_dataset(tmp_path / "data", radii=(3, 6), noise=False)
    run = tmp_path / "run"
    assert main(["train", "--images", str(root / "images"), "--masks", str(root / "masks"),
                 "--train-ids", str(root / "train.txt"), "--val-ids", str(root / "val.txt"),
                 "--out", str(run), "--config", "tiny_ff", "--steps", "2", "--batch-size",
                 "2", "--val-every", "2", "--threads", "1", "--roi-crops", "0.5", "-q"]) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert json.loads(state["options"])["roi_crops"] == 0.5
