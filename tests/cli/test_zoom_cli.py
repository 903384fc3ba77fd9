"""crop="zoom" and refine="crf" on the command line: the CRF's picture for models of any
channel count (the API's mask), pass 2's crop read again from the file one image at a time
and no larger than --max-pixels and the model's need, what results.json says pass 2 saw,
and an image that cannot be read again or refined is a failed image, not a crashed run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import dsd_fast
import dsd_fast.segmenter as segmenter
from dsd_fast.cli import main
from dsd_fast.cli.run import segment_files
from dsd_fast.zoom import Box

from conftest import seeded_network

needs_crf = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("pydensecrf"),
    reason="refine='crf' needs the [crf] extra (pydensecrf2)")


def _model(tmp_path, channels: int = 3, seed: int = 3) -> str:
    net = seeded_network("tiny_ff", seed, channels_g=channels)
    return str(dsd_fast.save_model(net, tmp_path / f"tiny{channels}.safetensors"))


def _picture(folder, name: str, mode: str = "RGB", size=(30, 44), seed: int = 7) -> str:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    img[size[0] // 4:size[0] * 3 // 4, size[1] // 4:size[1] * 3 // 4] //= 3   # a dark blob
    Image.fromarray(img).convert(mode).save(folder / name)
    return str(folder / name)


def _whole_image_box(monkeypatch, then=None):
    """Pass 1's box: its own, or the whole image where it found nothing (so pass 2 crops
    from the file whatever the random model draws); `then()` runs after pass 1."""
    real = segmenter.zoom_box

    def box(mask, **kw):
        if then is not None:
            then()
        return real(mask, **kw) or Box(0, 0, *np.shape(mask)[-2:])
    monkeypatch.setattr(segmenter, "zoom_box", box)


@needs_crf
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("crop", ["full", "zoom"])
def test_a_gray_model_refines_with_the_crf_as_the_api(tmp_path, monkeypatch, crop, mode):
    """--refine crf on a 1-channel model, zoomed or not, grey or RGB file: exit 0 and the
    API's mask (the run crashed with a traceback: the CRF got a 1-channel picture)."""
    _whole_image_box(monkeypatch)
    model, image = _model(tmp_path, channels=1), _picture(tmp_path / "in", "case.png", mode)
    out = tmp_path / "out"
    assert main(["segment", image, "-o", str(out), "--checkpoint", model, "--steps", "2",
                 "--ensemble", "3", "--refine", "crf", "--crop", crop, "-q",
                 "--no-report"]) == 0
    res = dsd_fast.load(model).segment(image, steps=2, ensemble=3, refine="crf", crop=crop,
                                       noise_keys=["case"], batch_size=1)[0]
    assert res.fusion.startswith("mean+crf")
    np.testing.assert_array_equal(np.array(Image.open(out / "case_mask.png")) > 0, res.mask)
    rec = json.loads((out / "results.json").read_text())["images"][0]
    assert rec["status"] == "segmented"
    if crop == "zoom":
        assert {k: rec["zoom"][k] for k in res.zoom} == res.zoom


@pytest.mark.parametrize("change", ["deleted", "truncated"])
def test_a_file_gone_before_pass_2_is_a_failed_image(tmp_path, monkeypatch, change):
    """The second read of a file (pass 2's crop) fails (deleted or truncated since its view
    was made): that image is recorded as failed, the other one of its batch is written."""
    model = _model(tmp_path)
    a = _picture(tmp_path / "in", "a.png", seed=1)
    b = _picture(tmp_path / "in", "b.png", seed=2)

    def spoil():
        if change == "deleted":
            (tmp_path / "in" / "b.png").unlink(missing_ok=True)
        else:
            data = (tmp_path / "in" / "b.png").read_bytes()
            (tmp_path / "in" / "b.png").write_bytes(data[:len(data) // 3])
    _whole_image_box(monkeypatch, then=spoil)
    # no overlay: writing the outputs does not read the file again (it would fail there)
    summary = segment_files([a, b], tmp_path / "out", checkpoint=model, steps=2, ensemble=2,
                            crop="zoom", batch_size=2, overlay=False, report=False)
    assert summary.exit_code == 1 and summary.segmented == 1
    assert [path for path, _ in summary.failures] == [b]
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["key"] for r in out["images"]] == ["a"]
    assert (tmp_path / "out" / "a_mask.png").exists()
    assert not (tmp_path / "out" / "b_mask.png").exists()


@needs_crf
def test_a_file_gone_before_its_crf_is_a_failed_image(tmp_path, monkeypatch):
    """--refine crf without zoom: the CRF's picture is read when the CRF runs; a file gone
    by then is a failed image (the run raised ImageInputError)."""
    model = _model(tmp_path)
    a = _picture(tmp_path / "in", "a.png", seed=1)
    b = _picture(tmp_path / "in", "b.png", seed=2)
    real = segmenter.crf_picture

    def picture(image, box=None):
        (tmp_path / "in" / "b.png").unlink(missing_ok=True)
        return real(image, box)
    monkeypatch.setattr(segmenter, "crf_picture", picture)
    summary = segment_files([a, b], tmp_path / "out", checkpoint=model, steps=2, ensemble=2,
                            refine="crf", batch_size=2, overlay=False, report=False)
    assert summary.segmented == 1 and [p for p, _ in summary.failures] == [b]
    assert "no such file" in summary.failures[0][1]


@needs_crf
def test_an_image_the_crf_cannot_take_is_a_failed_image(tmp_path, monkeypatch):
    """Whatever the CRF still refuses (here: a ValueError for one image) fails that image;
    the others of its batch are segmented."""
    import dsd_fast.crf as crf
    model = _model(tmp_path)
    a = _picture(tmp_path / "in", "a.png", seed=1)
    b = _picture(tmp_path / "in", "b.png", seed=2, size=(30, 46))
    real = crf.diffseg_refine

    def refine(image_rgb, sample_probs, rng):
        if image_rgb.shape[1] == 46:
            raise ValueError("the CRF cannot take this picture")
        return real(image_rgb, sample_probs, rng)
    monkeypatch.setattr(crf, "diffseg_refine", refine)
    summary = segment_files([a, b], tmp_path / "out", checkpoint=model, steps=2, ensemble=2,
                            refine="crf", batch_size=2)
    assert summary.exit_code == 1 and summary.segmented == 1
    assert summary.failures == [(b, "segmenting it failed: the CRF cannot take this picture")]
    res = dsd_fast.load(model).segment(a, steps=2, ensemble=2, refine="crf",
                                       noise_keys=["a"], batch_size=1)[0]
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out" / "a_mask.png")) > 0,
                                  res.mask)


def test_pass_2_s_crop_keeps_to_max_pixels_and_the_record_says_what_it_saw(tmp_path,
                                                                          monkeypatch):
    """A 300 x 400 file with --max-pixels 20000: pass 2's crop (the whole image's box) is
    read reduced, at most 20000 pixels (it was the box at full size, 120000); results.json's
    model_input says what pass 2's view was made from, pass 1's stays in zoom."""
    pipe = dsd_fast.load(_model(tmp_path))
    seen = []
    real_view = pipe.view

    def view(chw, opts=None):
        seen.append(tuple(chw.shape[1:]))
        return real_view(chw, opts)
    monkeypatch.setattr(pipe, "view", view)
    _whole_image_box(monkeypatch)
    image = _picture(tmp_path / "in", "big.png", size=(300, 400))
    summary = segment_files([image], tmp_path / "out", model=pipe, steps=2, ensemble=2,
                            crop="zoom", max_pixels=20000)
    assert summary.exit_code == 0
    rec = json.loads((tmp_path / "out" / "results.json").read_text())["images"][0]
    box = rec["zoom"]["box"]
    assert box[2] * box[3] > 20000                     # the box is larger than the budget
    h, w = rec["zoom"]["input"]
    assert seen[-1] == (h, w) and h * w <= 20000
    assert rec["model_input"] == f"downscaled from {w}x{h}"
    assert rec["zoom"]["pass1_input"].startswith("downscaled from")
    # resumed: the finished image's record, read back, still says so
    again = segment_files([image], tmp_path / "out", model=pipe, steps=2, ensemble=2,
                          crop="zoom", max_pixels=20000)
    assert again.skipped == 1
    back = json.loads((tmp_path / "out" / "results.json").read_text())["images"][0]
    assert (back["model_input"], back["zoom"]) == (rec["model_input"], rec["zoom"])
