"""crop="zoom"'s third pass (zoom_passes=3; zoom.py, segmenter.py `_zoomed`): box B around
pass 2's foreground inside box A, pass 3 on B, pasted B over A over pass 1; the cases where
no third pass runs; samples, several classes and the CRF's picture of each box; a batch's
images independent of each other; with the default 2 passes, none of it.

The stand-in segmenter's view is the picture itself (at its own size, so nothing is
resized and every mask is exact) and each pass answers from its own channel: pass 1 (the
image's key) from channel 0, pass 2 ("#zoom") from channel 1, pass 3 ("#zoom2") from
channel 2, foreground where the channel is above 0.5 (class 2 of a two-class stand-in:
above 0.8). The view being the picture, the model's input side is the picture's width, so
every box is the full width of a tall picture and the boxes differ in their rows.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dsd_fast
import dsd_fast.segmenter as segmenter
from dsd_fast.options import Choices
from dsd_fast.segmenter import Segmenter, zoom_key
from dsd_fast.zoom import Box, foreground_bbox, refined_box, square_box

from conftest import make_model

H, W = 200, 40


def _stand_in(classes: int = 1, members_differ: bool = False):
    """A Segmenter answering each pass from its channel (module docstring); with
    `members_differ`, the last member of passes 2 and 3 finds nothing anywhere."""

    class ByChannel(Segmenter):
        device = torch.device("cpu")
        calls: list = []

        @property
        def channels(self):
            return 3

        @property
        def mask_channels(self):
            return classes

        def choices(self):
            return Choices()

        def view(self, chw, opts=None):
            return chw

        def draw(self, views, keys, opts):
            self.calls.append((list(keys), tuple(views.shape[-2:])))
            n, e = views.shape[0], opts.ensemble
            out = torch.empty(n, e, classes, *views.shape[-2:])
            for i, key in enumerate(keys):
                c = 2 if str(key).endswith("#zoom2") else 1 if str(key).endswith("#zoom") else 0
                for k in range(classes):
                    out[i, :, k] = torch.where(views[i, c] > (0.5, 0.8)[k], 1.0, -1.0)
                if members_differ and c > 0:
                    out[i, -1] = -1.0
            return out if classes > 1 else out[:, :, 0]

    return ByChannel()


def _picture(pass1=(), pass2=(), pass3=()) -> torch.Tensor:
    """(3, H, W): each pass's channel 1.0 on its blocks (y0, y1, x0, x1), 0 elsewhere;
    a block of value v < 1 given as (y0, y1, x0, x1, v)."""
    img = torch.zeros(3, H, W)
    for c, blocks in enumerate((pass1, pass2, pass3)):
        for y0, y1, x0, x1, *v in blocks:
            img[c, y0:y1, x0:x1] = v[0] if v else 1.0
    return img


def _zoom(seg, img, **kw):
    kw = dict(steps=2, ensemble=3, noise_keys=["im"], postprocess="none", batch_size=1,
              zoom_passes=3) | kw
    return seg.segment(img, crop="zoom", **kw)[0]


# pass 1: its largest component rows 100..119 (all columns), and a smaller "artefact"
# rows 10..24, all columns (15 x 40 = 600 pixels, larger than pass 2's blob below)
PASS1 = ((100, 120, 0, 40), (10, 25, 0, 40))
# box A: side max(20, 40) * 1.6 = 64 rows (the 40 columns of the picture), centred on row
# 110: rows 78..141
A = Box(78, 0, 64, 40)


def test_pass_3_runs_on_the_box_around_pass_2_s_foreground_inside_box_a():
    seg = _stand_in()
    # pass 2's blob rows 108..111, columns 10..19: B = 40 x 40 (the least side) around
    # its centre row 110 -> rows 90..129. Pass 2's channel also has a larger blob outside
    # A (rows 10..29, all columns) that pass 2 never sees: B is not around it.
    img = _picture(PASS1, [(108, 112, 10, 20), (10, 30, 0, 40)], [(95, 125, 5, 35)])
    res = _zoom(seg, img)
    assert square_box((100, 0, 120, 40), (H, W), min_side=W) == A
    b = Box(90, 0, 40, 40)
    assert refined_box(np.asarray(img[1, A.slices[0], A.slices[1]] > 0.5), A, (H, W),
                       min_side=W) == b
    assert seg.calls == [(["im"], (H, W)), (["im#zoom"], (64, 40)), (["im#zoom2"], (40, 40))]
    assert res.zoom == {"box": b.as_list(), "input": [40, 40],
                        "pass2_box": A.as_list(), "pass2_input": [64, 40]}
    # B over A over pass 1, pixel for pixel
    want = (img[0] > 0.5).numpy()
    want[A.slices] = (img[1] > 0.5).numpy()[A.slices]
    want[b.slices] = (img[2] > 0.5).numpy()[b.slices]
    np.testing.assert_array_equal(res.mask, want)
    np.testing.assert_array_equal(res.probability, want.astype(np.float32))
    # the unrestricted rule (pass 2 pasted into pass 1, the whole image) takes the artefact
    pasted = (img[0] > 0.5).numpy()
    pasted[A.slices] = (img[1] > 0.5).numpy()[A.slices]
    assert foreground_bbox(pasted) == (10, 0, 25, 40)


def test_two_passes_by_default_pass_2_s_result_and_the_old_record():
    """Without zoom_passes (and with zoom_passes=2): no third pass on the same picture as
    the test above, pass 2 pasted into pass 1 and the record {"box", "input"} of box A,
    as before the third pass existed; zoom_passes=3 asked of a call with another crop is
    an error, and a value outside (2, 3) too."""
    img = _picture(PASS1, [(108, 112, 10, 20), (10, 30, 0, 40)], [(95, 125, 5, 35)])
    for kw in ({}, {"zoom_passes": 2}):
        seg = _stand_in()
        res = seg.segment(img, crop="zoom", steps=2, ensemble=3, noise_keys=["im"],
                          postprocess="none", **kw)[0]
        assert seg.calls == [(["im"], (H, W)), (["im#zoom"], (64, 40))]
        assert res.zoom == {"box": A.as_list(), "input": [64, 40]}
        want = (img[0] > 0.5).numpy()
        want[A.slices] = (img[1] > 0.5).numpy()[A.slices]
        np.testing.assert_array_equal(res.mask, want)
    with pytest.raises(ValueError, match=r"zoom_passes=3 applies to crop='zoom' .*"
                                         r"this call's crop is 'full'"):
        _stand_in().segment(img, crop="full", zoom_passes=3, steps=2)
    for bad in (1, 4, "3", 3.0, True):
        with pytest.raises(ValueError, match=r"zoom_passes must be None or one of \(2, 3\)"):
            _stand_in().segment(img, crop="zoom", zoom_passes=bad, steps=2)


def test_box_b_may_reach_beyond_box_a_and_pass_3_fills_all_of_it():
    seg = _stand_in()
    # pass 2's blob at A's lower edge, rows 136..140: B centred on row 138.5 -> rows
    # 119..158, 17 rows below A's last (141); pass 3's channel: a block rows 130..154
    img = _picture(PASS1, [(136, 141, 5, 15)], [(130, 155, 0, 40)])
    res = _zoom(seg, img)
    b = Box(119, 0, 40, 40)
    assert res.zoom["box"] == b.as_list() and res.zoom["pass2_box"] == A.as_list()
    assert b.top + b.height > A.top + A.height
    want = (img[0] > 0.5).numpy()
    want[A.slices] = (img[1] > 0.5).numpy()[A.slices]
    want[b.slices] = (img[2] > 0.5).numpy()[b.slices]
    np.testing.assert_array_equal(res.mask, want)
    assert res.mask[142:155].all()          # pass 3's rows below A: its own, not pass 1's
    assert not res.mask[100:119].any()      # pass 1's component inside A: pass 2's view


def test_nothing_inside_box_a_keeps_pass_2_s_result():
    """Pass 2 finds nothing inside A (its channel's blob lies outside A, so it never sees
    it): pass 2's result stands, no third pass, and the note says why."""
    seg = _stand_in()
    img = _picture(PASS1, [(10, 30, 0, 40)], [(0, H, 0, W)])
    res = _zoom(seg, img)
    assert [c[0] for c in seg.calls] == [["im"], ["im#zoom"]]
    assert res.zoom["box"] == res.zoom["pass2_box"] == A.as_list()
    assert res.zoom["input"] == res.zoom["pass2_input"] == [64, 40]
    assert "pass 2 found no foreground inside its box" in res.zoom["note"]
    want = (img[0] > 0.5).numpy()
    want[A.slices] = False
    np.testing.assert_array_equal(res.mask, want)


def test_box_b_equal_to_box_a_runs_no_third_pass():
    """Pass 2 finds what pass 1 found: B is A, the same view again; pass 2's stands."""
    seg = _stand_in()
    img = _picture(PASS1, [(100, 120, 0, 40)], [(0, H, 0, W)])
    res = _zoom(seg, img)
    assert [c[0] for c in seg.calls] == [["im"], ["im#zoom"]]
    assert res.zoom["box"] == res.zoom["pass2_box"] == A.as_list()
    assert "is its own box" in res.zoom["note"]
    np.testing.assert_array_equal(res.mask, (img[0] > 0.5).numpy())


def test_nothing_in_pass_1_is_one_whole_image_pass():
    seg = _stand_in()
    img = _picture((), [(100, 120, 0, 40)], [(0, H, 0, W)])
    res = _zoom(seg, img)
    assert [c[0] for c in seg.calls] == [["im"], ["im"]]
    assert res.zoom["box"] is None and "pass2_box" not in res.zoom
    np.testing.assert_array_equal(res.mask, np.zeros((H, W), bool))   # channel 0's answer


def test_samples_are_each_pass_s_members_in_its_box_and_pass_1_s_mask_outside():
    """return_samples: inside B pass 3's members, in A outside B pass 2's, outside A
    pass 1's mask for every member (pass 1 keeps no samples: its last member, which
    finds nothing here too, is not what stands there)."""
    seg = _stand_in(members_differ=True)
    img = _picture(PASS1, [(108, 112, 10, 20)], [(95, 125, 5, 35)])
    res = _zoom(seg, img, return_samples=True)
    b = Box(*res.zoom["box"])
    assert b == Box(90, 0, 40, 40) and res.samples.shape == (3, H, W)
    outside_a = np.ones((H, W), bool)
    outside_a[A.slices] = False
    a_not_b = ~outside_a
    a_not_b[b.slices] = False
    for e in range(2):
        np.testing.assert_array_equal(res.samples[e][b.slices], (img[2] > 0.5).numpy()[b.slices])
        np.testing.assert_array_equal(res.samples[e][a_not_b], (img[1] > 0.5).numpy()[a_not_b])
    assert not res.samples[2][~outside_a].any()               # the finer passes' last member
    for member in res.samples:
        np.testing.assert_array_equal(member[outside_a], res.mask[outside_a])
    assert res.mask[outside_a].any()                          # pass 1's component rows 10..24


def test_two_classes_are_pasted_per_class_and_b_follows_their_union():
    seg = _stand_in(classes=2)
    # pass 2: class 1 (> 0.5) rows 104..115, class 2 (> 0.8) rows 108..111 inside it;
    # the union is class 1's rows 104..115 -> B side max(12, 10) * 1.6 -> 40, rows 90..129
    img = _picture(PASS1, [(104, 116, 10, 20, 0.6), (108, 112, 12, 18)],
                   [(95, 125, 5, 35, 0.6), (100, 110, 10, 30)])
    res = _zoom(seg, img)
    b = Box(90, 0, 40, 40)
    assert res.zoom["box"] == b.as_list() and res.zoom["pass2_box"] == A.as_list()
    labels = [np.where(img[c] > 0.8, 2, np.where(img[c] > 0.5, 1, 0)).astype(np.uint8)
              for c in range(3)]
    want = labels[0].copy()
    want[A.slices] = labels[1][A.slices]
    want[b.slices] = labels[2][b.slices]
    np.testing.assert_array_equal(res.mask, want)
    assert res.probability.shape == (2, H, W)
    np.testing.assert_array_equal(res.probability[1], (want == 2).astype(np.float32))


def test_the_crf_refines_each_finer_pass_on_its_own_box(monkeypatch):
    """refine="crf": pass 2's CRF on the picture of A, pass 3's on that of B (pass 1 has
    none), as pass 2's rule was."""
    pytest.importorskip("pydensecrf.densecrf")
    seg = _stand_in()
    boxes, real = [], segmenter.crf_picture

    def picture(image, box=None):
        boxes.append(box)
        return real(image, box)
    monkeypatch.setattr(segmenter, "crf_picture", picture)
    img = _picture(PASS1, [(108, 112, 10, 20)], [(95, 125, 5, 35)])
    res = _zoom(seg, img, refine="crf")
    assert res.fusion.startswith("mean+crf") and len(seg.calls) == 3
    assert boxes == [A, Box(*res.zoom["box"])]


# ----------------------------------------------------------------------------- batches

def _by_view(pipe, monkeypatch):
    """pipe.draw answering from its 16 x 16 view's channel of the pass (as the stand-in),
    deterministic: only the bookkeeping of a batch can make images depend on each other."""
    calls = []

    def draw(views, keys, opts):
        calls.append(list(keys))
        out = torch.empty(views.shape[0], opts.ensemble, *views.shape[-2:])
        for i, key in enumerate(keys):
            c = 2 if str(key).endswith("#zoom2") else 1 if str(key).endswith("#zoom") else 0
            out[i] = torch.where(views[i, c] > 0.5, 1.0, -1.0)
        return out
    monkeypatch.setattr(pipe, "draw", draw)
    return calls


def test_a_batch_s_images_do_not_depend_on_each_other(monkeypatch):
    """Four images in one batch, one per case (three passes; pass 2 finds nothing in A;
    pass 1 finds nothing; three passes on another layout): each result is the image's
    alone, and each finer pass ran all its crops in one network batch."""
    pipe = dsd_fast.pipeline_from_network(make_model("tiny", 0))
    calls = _by_view(pipe, monkeypatch)
    imgs = []
    for layout in ((10, 30, 20, 40), (40, 60, 50, 70)):
        img = torch.zeros(3, 96, 96)
        y0, y1, x0, x1 = layout
        img[0, y0:y1, x0:x1] = 1.0
        img[1, y0 + 6:y1, x0 + 6:x1] = 1.0       # pass 2 finds part of it
        img[2, :, :] = 1.0                         # pass 3: everything it sees
        imgs.append(img)
    empty_a = imgs[0].clone()
    empty_a[1] = 0.0                               # pass 2: nothing
    no_pass1 = imgs[1].clone()
    no_pass1[0] = 0.0                              # pass 1: nothing
    batch = [imgs[0], empty_a, no_pass1, imgs[1]]
    keys = ["a", "b", "c", "d"]
    together = pipe.segment(batch, crop="zoom", zoom_passes=3, steps=2, ensemble=2,
                            noise_keys=keys, batch_size=4, postprocess="none")
    assert calls == [keys, ["a#zoom", "b#zoom", "c", "d#zoom"], ["a#zoom2", "d#zoom2"]]
    assert [r.zoom["box"] is None for r in together] == [False, False, True, False]
    assert "note" in together[1].zoom and "note" not in together[0].zoom
    for img, key, res in zip(batch, keys, together):
        alone = pipe.segment(img, crop="zoom", zoom_passes=3, steps=2, ensemble=2,
                             noise_keys=[key], postprocess="none")[0]
        assert res.zoom == alone.zoom
        for name in ("mask", "probability", "std", "entropy"):
            np.testing.assert_array_equal(getattr(res, name), getattr(alone, name))
    # the batch in another order: the same results
    again = pipe.segment(batch[::-1], crop="zoom", zoom_passes=3, steps=2, ensemble=2,
                         noise_keys=keys[::-1], batch_size=4, postprocess="none")[::-1]
    for res, other in zip(together, again):
        assert res.zoom == other.zoom
        np.testing.assert_array_equal(res.probability, other.probability)


def test_each_pass_has_its_own_noise_key():
    assert zoom_key("b") == "b#zoom" and zoom_key(7, 3) == "7#zoom2"
    with pytest.raises(ValueError, match="passes 2 and 3"):
        zoom_key("b", 1)


def test_the_results_json_record_describes_the_finest_pass_and_keeps_pass_2_s_box():
    """zoom_record: model_input says what the finest pass's view was made from (B's crop,
    here reduced), pass 1's moves to pass1_input, pass 2's box and crop stay."""
    from dsd_fast.zoom import zoom_record
    zoom = {"box": [90, 0, 400, 400], "input": [256, 256], "pass2_box": [78, 0, 64, 40],
            "pass2_input": [64, 40]}
    rec = zoom_record(zoom, "downscaled from 640x480")
    assert rec == {"model_input": "downscaled from 256x256",
                   "zoom": {**zoom, "pass1_input": "downscaled from 640x480"}}
    same = {"box": [78, 0, 64, 40], "input": [64, 40], "pass2_box": [78, 0, 64, 40],
            "pass2_input": [64, 40], "note": "..."}
    assert zoom_record(same, "full")["model_input"] == "full"


def test_a_file_gone_before_pass_3_is_a_failed_image(tmp_path, monkeypatch):
    """The command line reads each file again for pass 3's crop: a file deleted after pass
    2 is a failed image (as before pass 2), the other image of its batch is written with
    pass 3's box in results.json."""
    import json

    from PIL import Image

    from dsd_fast.cli.run import segment_files
    from conftest import seeded_network
    model = str(dsd_fast.save_model(seeded_network("tiny_ff", 3),
                                    tmp_path / "tiny.safetensors"))
    folder = tmp_path / "in"
    folder.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(
            folder / f"{name}.png")
    # whatever the random model draws: box A the whole image, box B its top-left 20 x 20
    monkeypatch.setattr(segmenter, "zoom_box", lambda mask, **kw: Box(0, 0, 30, 44))

    def finer(regions, box, size_hw, **kw):
        (folder / "b.png").unlink(missing_ok=True)
        return Box(0, 0, 20, 20)
    monkeypatch.setattr(segmenter, "refined_box", finer)
    summary = segment_files([str(folder / "a.png"), str(folder / "b.png")], tmp_path / "out",
                            checkpoint=model, steps=2, ensemble=2, crop="zoom", zoom_passes=3,
                            batch_size=2,
                            overlay=False, report=False)
    assert summary.segmented == 1 and [p for p, _ in summary.failures] == [str(folder / "b.png")]
    rec = json.loads((tmp_path / "out" / "results.json").read_text())["images"]
    assert [r["key"] for r in rec] == ["a"]
    assert rec[0]["zoom"]["box"] == [0, 0, 20, 20]
    assert rec[0]["zoom"]["pass2_box"] == [0, 0, 30, 44]
    assert rec[0]["model_input"] == "full" and rec[0]["zoom"]["pass1_input"] == "full"
