"""crop="zoom"'s zoom_boxes (zoom.candidate_boxes, zoom.drawn_entropy, segmenter
`_surest_boxes`; options, pipeline and command line as zoom_passes): pass 2 runs on up to N
candidate boxes around pass 1's objects and keeps the box whose maps are surest; 1 (the
default) is the single box around pass 1's largest object, as before the option; a model
file's "zoom_boxes" metadata is the default; bad values, and more than 1 without zoom, are
errors; the command line runs what the API runs and records the value only when above 1.

The stand-in segmenter's view is the picture itself (nothing is resized) and its members
read a pass's channel as a probability: member e of E draws foreground where the channel
is above (e + 0.5) / E, so the ensemble's probability is the channel's value (in steps of
1/E). Pass 1 (the image's key) reads channel 0, every pass 2 (a key ending "#zoom") channel
1.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import dsd_fast
from dsd_fast.cli.run import segment_files
from dsd_fast.cli.errors import UsageError
from dsd_fast.errors import CheckpointError
from dsd_fast.options import Choices, SegmentOptions, resolve
from dsd_fast.results import SegmentationResult
from dsd_fast.zoom import Box, box_iou, candidate_boxes, drawn_entropy, zoom_box

from test_zoom_outside import _cli, _file, _image
from test_zoom_third_pass import _stand_in as _by_channel

H, W = 200, 40


def _stand_in():
    """test_zoom_third_pass's stand-in (the picture is the view, one mask channel) whose
    members read their pass's channel as a probability (module docstring)."""

    class ByLevel(type(_by_channel())):
        calls: list = []

        def draw(self, views, keys, opts):
            self.calls.append((list(keys), tuple(views.shape[-2:]), opts.steps))
            n, e = views.shape[0], opts.ensemble
            out = torch.empty(n, e, *views.shape[-2:])
            for i, key in enumerate(keys):
                c = 1 if str(key).endswith("#zoom") else 0
                for m in range(e):
                    out[i, m] = torch.where(views[i, c] > (m + 0.5) / e, 1.0, -1.0)
            return out

    return ByLevel()


def _picture(pass1=(), pass2=()) -> torch.Tensor:
    """(3, H, W): blocks (y0, y1, x0, x1, value) on channel 0 (pass 1) and 1 (pass 2)."""
    img = torch.zeros(3, H, W)
    for c, blocks in enumerate((pass1, pass2)):
        for y0, y1, x0, x1, v in blocks:
            img[c, y0:y1, x0:x1] = v
    return img


# Pass 1 draws a large region it is unsure of (0.6: rows 100..139, all columns) and, apart,
# a small one it is sure of (1.0: rows 10..19, columns 10..19), as a fundus photo's pass 1
# drew half the photo as the disc beside the disc itself. Pass 2 sees the large region's
# box as unsure again and the small one's as sure.
PASS1 = ((100, 140, 0, 40, 0.6), (10, 20, 10, 20, 1.0))
PASS2 = ((90, 150, 0, 40, 0.6), (8, 24, 8, 24, 1.0))
BIG = Box(88, 0, 64, 40)         # side 40 * 1.6 = 64 rows around row 120
SMALL = Box(0, 0, 40, 40)        # side max(10 * 1.6, 40) around row 15, moved inside


def _zoom(seg, img, **kw):
    kw = dict(steps=5, ensemble=5, noise_keys=["im"], postprocess="none",
              batch_size=1) | kw
    return seg.segment(img, crop="zoom", **kw)[0]


def test_the_box_whose_second_pass_is_surest_is_kept():
    seg = _stand_in()
    img = _picture(PASS1, PASS2)
    res = _zoom(seg, img, zoom_boxes=3)
    # the 0.9 and 0.75 levels both give the small region's box: tried once
    assert seg.calls == [(["im"], (H, W), 5), (["im#zoom"], (64, 40), 5),
                         (["im#box1#zoom"], (40, 40), 5)]
    assert res.zoom["box"] == SMALL.as_list()
    assert res.zoom["boxes_tried"] == [BIG.as_list(), SMALL.as_list()]
    # inside the kept box pass 2's map, outside it pass 1's (the large region stays pass 1's)
    want = (img[0] > 0.5).numpy().astype(np.float32) * 0.6
    want[10:20, 10:20] = 1.0
    want[SMALL.slices] = np.where(img[1][SMALL.slices].numpy() > 0.5,
                                  img[1][SMALL.slices].numpy(), 0.0)
    np.testing.assert_allclose(res.probability, want, atol=1e-6)
    # the default tries the largest object's box alone, the record as before the option
    seg = _stand_in()
    one = _zoom(seg, img)
    assert [c[0] for c in seg.calls] == [["im"], ["im#zoom"]]
    assert one.zoom == {"box": BIG.as_list(), "input": [64, 40]}


def test_one_candidate_is_the_single_box_s_result():
    """Where pass 1 has one object, zoom_boxes=3 runs what zoom_boxes=1 runs (pass 1 at 5
    steps here, so both have the same pass 1)."""
    img = _picture([(100, 140, 0, 40, 1.0)], [(90, 150, 0, 40, 0.6)])
    seg3, seg1 = _stand_in(), _stand_in()
    three, one = _zoom(seg3, img, zoom_boxes=3), _zoom(seg1, img)
    assert seg3.calls == seg1.calls
    assert three.zoom == one.zoom and "boxes_tried" not in three.zoom
    np.testing.assert_array_equal(three.probability, one.probability)


def test_several_boxes_run_pass_1_at_five_steps():
    """A 3-step call's pass 1 runs the call's 3 steps with one box, 5 with several: the
    candidates read pass 1's confidence, which 3 steps made sharp where they were wrong."""
    img = _picture(PASS1, PASS2)
    for boxes, pass1_steps in ((1, 3), (2, 5)):
        seg = _stand_in()
        _zoom(seg, img, steps=3, zoom_boxes=boxes)
        assert [c[2] for c in seg.calls][0] == pass1_steps
        assert all(c[2] == 3 for c in seg.calls[1:])


def test_candidate_boxes_first_is_zoom_box_then_levels_then_second_components():
    regions = np.zeros((100, 100), bool)
    prob = np.zeros((100, 100), np.float32)
    regions[50:90, 50:90] = True                 # largest: 1600 px
    prob[50:90, 50:90] = 0.6
    regions[5:25, 5:25] = True                   # second: 400 px, a quarter of the largest
    prob[5:25, 5:25] = 0.8
    prob[60:66, 60:66] = 0.95                    # the large region's sure core
    boxes = candidate_boxes(regions, prob, 4, min_side=10)
    assert boxes[0] == zoom_box(regions, min_side=10)
    # the 0.9 level's component: 6 * 1.6 = 9.6 -> the least side 10, around row 63
    # the 0.75 level's largest is the second region: 20 * 1.6 = 32 around row 15, moved
    # inside; the second component of the mask is that box again (not tried twice)
    assert boxes[1:] == [Box(58, 58, 10, 10), Box(0, 0, 32, 32)]
    assert candidate_boxes(regions, prob, 2, min_side=10) == boxes[:2]
    assert candidate_boxes(np.zeros((9, 9), bool), np.zeros((9, 9)), 3) == []
    # a component under a quarter of its mask's largest is not a candidate
    regions[5:25, 5:25] = False
    regions[5:15, 5:15] = True
    prob[5:25, 5:25] = 0.0
    assert len(candidate_boxes(regions, prob, 4, min_side=10)) == 2


def test_boxes_overlapping_by_the_limit_are_tried_once():
    assert box_iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == 1.0
    assert box_iou(Box(0, 0, 10, 10), Box(0, 5, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou(Box(0, 0, 10, 10), Box(20, 20, 5, 5)) == 0.0
    regions = np.zeros((100, 100), bool)
    prob = np.zeros((100, 100), np.float32)
    regions[20:80, 20:80] = True
    prob[20:80, 20:80] = 0.95                    # every level's component is the same
    assert len(candidate_boxes(regions, prob, 4)) == 1


def test_drawn_entropy_is_the_mean_entropy_over_what_is_drawn():
    def result(p):
        p = np.asarray(p, np.float32)
        ent = np.where((p > 0) & (p < 1), -(p * np.log2(np.clip(p, 1e-9, 1))
                                            + (1 - p) * np.log2(np.clip(1 - p, 1e-9, 1))), 0)
        return SegmentationResult(mask=p > 0.5, probability=p, std=np.zeros_like(p),
                                  entropy=ent.astype(np.float32))
    assert drawn_entropy(result(np.zeros((4, 4)))) == math.inf
    p = np.zeros((4, 4))
    p[0, :2] = (1.0, 0.75)
    p[3, 3] = 0.25                               # not drawn: not counted
    want = 0.5 * -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert drawn_entropy(result(p)) == pytest.approx(want, rel=1e-5)


def test_resolve_and_bad_values():
    own = Choices(zoom_boxes=3)
    assert resolve(SegmentOptions(crop="zoom"), own).zoom_boxes == 3
    assert resolve(SegmentOptions(crop="zoom", zoom_boxes=1), own).zoom_boxes == 1
    assert resolve(SegmentOptions(crop="zoom"), Choices()).zoom_boxes == 1
    assert resolve(SegmentOptions(crop="full"), own).zoom_boxes == 1
    with pytest.raises(ValueError, match="zoom_boxes=2 applies to crop='zoom'"):
        resolve(SegmentOptions(crop="full", zoom_boxes=2), Choices())
    for bad in (0, 5, "2", 2.0, True):
        with pytest.raises(ValueError, match=r"zoom_boxes must be None or one of \(1, 2, 3, 4\)"):
            SegmentOptions(zoom_boxes=bad)
    assert SegmentOptions(zoom_boxes=np.int64(3)).zoom_boxes == 3


def test_a_file_s_zoom_boxes_is_the_default_and_is_saved_again(tmp_path):
    own = dsd_fast.load(_file(tmp_path, "own", crop="zoom", zoom_boxes="3"))
    plain = dsd_fast.load(_file(tmp_path, "plain", crop="zoom"))
    assert own.zoom_boxes_default == 3 and plain.zoom_boxes_default is None
    assert own.resolve().zoom_boxes == 3 and plain.resolve().zoom_boxes == 1
    assert own.resolve(zoom_boxes=1).zoom_boxes == 1
    again = dsd_fast.save_model(own, tmp_path / "again.safetensors")
    from dsd_fast.checkpoint import read_metadata
    assert read_metadata(again)["zoom_boxes"] == "3"
    for bad in ("5", "two"):
        with pytest.raises(CheckpointError, match=f"zoom_boxes metadata '{bad}' is not one "
                                                  "of 1, 2, 3, 4"):
            dsd_fast.load(_file(tmp_path, "bad", zoom_boxes=bad))


def test_the_command_line_runs_the_api_s_boxes_and_records_above_1_only(tmp_path, capsys):
    image, model = _image(tmp_path), _file(tmp_path, crop="zoom")
    assert _cli(tmp_path, image, model, "--zoom-boxes", "3") == 0
    settings = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]
    assert settings["zoom_boxes"] == 3
    res = dsd_fast.load(model).segment(image, steps=2, ensemble=3, noise_keys=["case"],
                                       batch_size=1, zoom_boxes=3)[0]
    rec = json.loads((tmp_path / "out" / "results.json").read_text())["images"][0]
    assert rec["zoom"]["box"] == res.zoom["box"]
    assert rec["zoom"].get("boxes_tried") == res.zoom.get("boxes_tried")
    assert _cli(tmp_path, image, model, out="plain") == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())["settings"]
    assert "zoom_boxes" not in plain
    assert _cli(tmp_path, image, model, "--crop", "full", "--zoom-boxes", "2",
                out="full") == 2
    assert "--zoom-boxes 2 applies to --crop zoom" in capsys.readouterr().err
    with pytest.raises(UsageError, match="^--zoom-boxes must be None or one of"):
        segment_files([image], tmp_path / "x", checkpoint=model, zoom_boxes=7)
