"""crop="zoom"'s zoom_outside (options.py, zoom.clear_outside, segmenter `_zoomed`):
"background" makes everything outside the finest box (B where pass 3 ran, else A)
background with zero maps and samples, the record says so, a whole-image pass is left as it
is; the model file's "zoom_outside" metadata is the default, a call's value overrides it;
bad values and "background" without zoom are errors; the command line's --zoom-outside
gives the API's mask and is recorded in results.json's settings.

The exact cases use test_zoom_third_pass.py's stand-in segmenter (each pass answers from its
own channel of the picture, nothing resized), so every pixel's expected value is known.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import dsd_fast
from dsd_fast.checkpoint import read_metadata, save_model
from dsd_fast.cli import main
from dsd_fast.errors import CheckpointError
from dsd_fast.options import Choices, SegmentOptions, resolve
from dsd_fast.zoom import Box

from conftest import seeded_network
from test_zoom_third_pass import PASS1, A, H, W, _picture, _stand_in, _zoom

B = Box(90, 0, 40, 40)     # the box around pass 2's blob rows 108..111 (test_zoom_third_pass)


def _outside(box: Box) -> np.ndarray:
    out = np.ones((H, W), bool)
    out[box.slices] = False
    return out


def _assert_background_outside(res, box: Box) -> None:
    """Mask, maps (and samples) zero outside `box`, and the record says so."""
    out = _outside(box)
    assert not res.mask[..., out].any()
    for a in (res.probability, res.std, res.entropy):
        assert not a[..., out].any()
    if res.samples is not None:
        assert not res.samples[..., out].any()
    assert res.zoom["outside"] == "background"


# ----------------------------------------------------------------------------- exact cases

def test_background_outside_box_b_where_pass_3_ran():
    # pass 1 finds the component at rows 100..119 and an artefact rows 10..24 (kept by
    # "pass1"); pass 2 a blob inside A (B around it) and a smaller one in A above B,
    # pass 3 a block inside B
    img = _picture(PASS1, [(108, 112, 10, 20), (80, 82, 0, 5)], [(95, 125, 5, 35)])
    kept = _zoom(_stand_in(), img)
    res = _zoom(_stand_in(), img, zoom_outside="background")
    assert Box(*res.zoom["box"]) == B and res.zoom["pass2_box"] == A.as_list()
    assert res.zoom == {**kept.zoom, "outside": "background"}
    assert "outside" not in kept.zoom
    assert kept.mask[10:25].all()                       # "pass1" keeps pass 1's artefact
    want = np.zeros((H, W), bool)
    want[B.slices] = (img[2] > 0.5).numpy()[B.slices]   # pass 3's inside B, nothing else
    np.testing.assert_array_equal(res.mask, want)
    np.testing.assert_array_equal(res.probability, want.astype(np.float32))
    _assert_background_outside(res, B)
    # inside B the maps are the default's (pass 3's) exactly
    for name in ("mask", "probability", "std", "entropy"):
        np.testing.assert_array_equal(getattr(res, name)[B.slices],
                                      getattr(kept, name)[B.slices])
    # pass 2's region inside A outside B is dropped too: the finest box alone stands
    assert kept.mask[80:82, 0:5].all() and not res.mask[A.top:B.top].any()


def test_background_outside_box_a_where_no_third_pass_ran():
    """B is A (pass 2 finds what pass 1 found): pass 2's result stands on A, background
    outside A (pass 1's artefact rows 10..24 gone)."""
    img = _picture(PASS1, [(100, 120, 0, 40)], [(0, H, 0, W)])
    res = _zoom(_stand_in(), img, zoom_outside="background")
    assert res.zoom["box"] == A.as_list() and "is its own box" in res.zoom["note"]
    want = np.zeros((H, W), bool)
    want[100:120] = True
    np.testing.assert_array_equal(res.mask, want)
    _assert_background_outside(res, A)


def test_nothing_in_pass_1_leaves_the_whole_image_pass_as_it_is(monkeypatch):
    """No box: pass 2 ran on the whole image (crop="full"'s result); nothing is cleared
    and the record has no "outside". (The whole view answers from channel 0 as pass 1
    does, so pass 1's finding is ignored here: no box whatever it found.)"""
    import dsd_fast.segmenter as segmenter
    monkeypatch.setattr(segmenter, "zoom_box", lambda mask, **kw: None)
    img = _picture(PASS1, [(100, 120, 0, 40)], [(0, H, 0, W)])
    seg = _stand_in()
    kept = _zoom(seg, img)
    res = _zoom(seg, img, zoom_outside="background")
    assert res.zoom["box"] is None and "outside" not in res.zoom
    assert res.mask[10:25].all() and res.mask[100:120].all() and kept.zoom == res.zoom
    for name in ("mask", "probability", "std", "entropy"):
        np.testing.assert_array_equal(getattr(res, name), getattr(kept, name))


def test_samples_are_background_outside_the_finest_box():
    """return_samples: every member False outside B (where "pass1" gives pass 1's mask),
    each member's own answer inside B."""
    img = _picture(PASS1, [(108, 112, 10, 20)], [(95, 125, 5, 35)])
    kept = _zoom(_stand_in(members_differ=True), img, return_samples=True)
    res = _zoom(_stand_in(members_differ=True), img, return_samples=True,
                zoom_outside="background")
    assert res.samples.shape == kept.samples.shape == (3, H, W)
    assert kept.samples[:, 10:25].all()                 # pass 1's artefact for every member
    _assert_background_outside(res, B)
    np.testing.assert_array_equal(res.samples[..., B.slices[0], B.slices[1]],
                                  kept.samples[..., B.slices[0], B.slices[1]])
    assert not res.samples[2].any() and res.samples[0].any()   # the last member: nothing


def test_two_classes_are_background_outside_the_finest_box():
    seg = _stand_in(classes=2)
    img = _picture(PASS1, [(104, 116, 10, 20, 0.6), (108, 112, 12, 18)],
                   [(95, 125, 5, 35, 0.6), (100, 110, 10, 30)])
    res = _zoom(seg, img, zoom_outside="background", return_samples=True)
    assert Box(*res.zoom["box"]) == B and res.probability.shape == (2, H, W)
    assert res.samples.shape == (3, 2, H, W)
    want = np.zeros((H, W), np.uint8)
    pass3 = np.where(img[2] > 0.8, 2, np.where(img[2] > 0.5, 1, 0)).astype(np.uint8)
    want[B.slices] = pass3[B.slices]
    np.testing.assert_array_equal(res.mask, want)
    _assert_background_outside(res, B)


# ----------------------------------------------------------------------------- the options

def test_bad_values_name_the_choices():
    with pytest.raises(ValueError, match=r"zoom_outside must be None or one of "
                                         r"\('pass1', 'background'\), got 'none'"):
        SegmentOptions(zoom_outside="none")
    with pytest.raises(ValueError, match="zoom_outside='background' applies to crop='zoom'"):
        resolve(SegmentOptions(crop="full", zoom_outside="background"), Choices())
    with pytest.raises(ValueError, match="applies to crop='zoom'"):
        _stand_in().segment(torch.zeros(3, H, W), zoom_outside="background", steps=2)


def test_the_model_s_default_applies_to_zoom_only_and_a_call_overrides_it():
    own = Choices(zoom_outside="background")
    assert resolve(SegmentOptions(crop="zoom"), own).zoom_outside == "background"
    assert resolve(SegmentOptions(crop="zoom", zoom_outside="pass1"), own).zoom_outside \
        == "pass1"
    assert resolve(SegmentOptions(crop="zoom"), Choices()).zoom_outside == "pass1"
    # the file's own does not apply (nor fail) without zoom; "pass1" is always accepted
    assert resolve(SegmentOptions(crop="full"), own).zoom_outside == "pass1"
    assert resolve(SegmentOptions(crop="full", zoom_outside="pass1"), own).zoom_outside \
        == "pass1"
    again = resolve(SegmentOptions(crop="zoom"), own)
    assert resolve(again, Choices()) == again           # a resolved object stays


def _file(tmp_path, name="m", **meta) -> str:
    return str(save_model(seeded_network("tiny_ff", 3), tmp_path / f"{name}.safetensors",
                          extra_metadata=meta or None))


def _image(tmp_path) -> str:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    img = rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)
    img[8:22, 10:30] //= 3
    Image.fromarray(img).save(folder / "case.png")
    return str(folder / "case.png")


def test_a_file_s_zoom_outside_is_the_default_and_a_call_overrides_it(tmp_path,
                                                                         monkeypatch):
    """A file saying zoom_outside=background: its zoom clears outside the finest box by
    default; zoom_outside="pass1" gives the plain file's result; crop="full" is untouched;
    saved again, the pipeline keeps it. The boxes are fixed (A the top-left 24 x 30, B its
    top-left 20 x 20) so something lies outside whatever the random model draws."""
    import dsd_fast.segmenter as segmenter
    monkeypatch.setattr(segmenter, "zoom_box", lambda mask, **kw: Box(0, 0, 24, 30))
    monkeypatch.setattr(segmenter, "refined_box", lambda *a, **kw: Box(0, 0, 20, 20))
    image = _image(tmp_path)
    plain = dsd_fast.load(_file(tmp_path, "plain", crop="zoom"))
    own = dsd_fast.load(_file(tmp_path, "own", crop="zoom", zoom_outside="background"))
    assert own.zoom_outside_default == "background" and plain.zoom_outside_default is None
    kw = dict(steps=2, ensemble=3, noise_keys=["case"], postprocess="none", zoom_passes=3)
    cleared, kept = own.segment(image, **kw)[0], plain.segment(image, **kw)[0]
    asked = plain.segment(image, zoom_outside="background", **kw)[0]
    assert cleared.zoom == asked.zoom == {**kept.zoom, "outside": "background"}
    np.testing.assert_array_equal(cleared.probability, asked.probability)
    assert kept.probability[20:].any() and not cleared.probability[20:].any()
    np.testing.assert_array_equal(cleared.probability[:20, :20], kept.probability[:20, :20])
    back = own.segment(image, zoom_outside="pass1", **kw)[0]
    assert back.zoom == kept.zoom
    np.testing.assert_array_equal(back.probability, kept.probability)
    kw.pop("zoom_passes")                     # (3 with another crop is an error)
    full = own.segment(image, crop="full", **kw)[0]
    base = plain.segment(image, crop="full", **kw)[0]
    assert full.zoom is None
    np.testing.assert_array_equal(full.probability, base.probability)
    again = save_model(own, tmp_path / "again.safetensors")
    assert read_metadata(again)["zoom_outside"] == "background"


def test_a_file_s_zoom_outside_must_be_one_of_the_choices(tmp_path):
    with pytest.raises(CheckpointError, match="zoom_outside metadata 'none' is not one of "
                                              "'pass1', 'background'"):
        dsd_fast.load(_file(tmp_path, zoom_outside="none"))


# ----------------------------------------------------------------------------- command line

def _cli(tmp_path, image, model, *flags, out="out") -> int:
    return main(["segment", image, "-o", str(tmp_path / out), "--checkpoint", model, "-q",
                 "--no-report", "--steps", "2", "--ensemble", "3", *flags])


def test_the_command_line_clears_outside_as_the_api_and_records_it(tmp_path, monkeypatch):
    import dsd_fast.segmenter as segmenter
    monkeypatch.setattr(segmenter, "zoom_box", lambda mask, **kw: Box(0, 0, 24, 30))
    monkeypatch.setattr(segmenter, "refined_box", lambda *a, **kw: Box(0, 0, 20, 20))
    image, model = _image(tmp_path), _file(tmp_path, crop="zoom")
    assert _cli(tmp_path, image, model, "--zoom-outside", "background",
                "--zoom-passes", "3") == 0
    res = dsd_fast.load(model).segment(image, steps=2, ensemble=3, noise_keys=["case"],
                                       batch_size=1, zoom_outside="background",
                                       zoom_passes=3)[0]
    cli = np.array(Image.open(tmp_path / "out" / "case_mask.png")) > 0
    np.testing.assert_array_equal(cli, res.mask)
    prob = np.array(Image.open(tmp_path / "out" / "case_prob.png")) / 65535
    np.testing.assert_allclose(prob, res.probability, atol=1 / 65535)
    assert not prob[20:].any()
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    assert out["settings"]["crop"] == "zoom" and out["settings"]["zoom_outside"] == "background"
    assert out["images"][0]["zoom"]["outside"] == "background"
    # the default ("pass1") is not recorded, so runs from before the option still match
    assert _cli(tmp_path, image, model, out="plain") == 0
    assert "zoom_outside" not in json.loads(
        (tmp_path / "plain" / "results.json").read_text())["settings"]


def test_the_command_line_takes_the_file_s_own_and_the_flag_overrides_it(tmp_path):
    image = _image(tmp_path)
    model = _file(tmp_path, crop="zoom", zoom_outside="background")
    assert _cli(tmp_path, image, model) == 0
    settings = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]
    assert settings["zoom_outside"] == "background"
    assert _cli(tmp_path, image, model, "--zoom-outside", "pass1", out="asked") == 0
    rec = json.loads((tmp_path / "asked" / "results.json").read_text())
    assert "zoom_outside" not in rec["settings"] and "outside" not in rec["images"][0]["zoom"]
    # --crop full: the file's own does not apply
    assert _cli(tmp_path, image, model, "--crop", "full", out="full") == 0
    assert "zoom_outside" not in json.loads(
        (tmp_path / "full" / "results.json").read_text())["settings"]


def test_the_command_line_rejects_background_without_zoom(tmp_path, capsys):
    image, model = _image(tmp_path), _file(tmp_path)
    for flags in (["--zoom-outside", "background"],
                  ["--crop", "full", "--zoom-outside", "background"]):
        assert _cli(tmp_path, image, model, *flags) == 2
        assert "--zoom-outside background applies to --crop zoom" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        _cli(tmp_path, image, model, "--zoom-outside", "none")
    assert "invalid choice: 'none'" in capsys.readouterr().err
