"""The API and the command line give the same mask for the same file, options and noise key,
for every family: both run the segmenter's one loop (segmenter.py) from its view of the
image, so the mask the command line writes is the one segment() returns, fused, refined and
cleaned up the same way (before, the command line thresholded the probability itself and
skipped the file's mask clean-up, and resized a DiffSeg centre-crop model's input itself)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dsd_fast
from dsd_fast.cli import main
from dsd_fast.families import get_family
from dsd_fast.families.diffseg import DiffSegPipeline

SMALL = {"dermosegdiff": "tiny_ff", "medsegdiff": "msd_tiny_sc",
         "medsegdiff-official": "msd_official_tiny", "diffseg": "diffseg_tiny"}


def _model_file(tmp_path, family: str, **meta) -> str:
    fam = get_family(family)
    config = fam.configs[SMALL[family]]
    torch.manual_seed(3)
    if family == "diffseg":
        model = DiffSegPipeline(fam.build_reference(config).eval(),
                                fam.build_reference(config).eval(), crop="center")
    else:
        model = fam.build_reference(config).eval()
    return str(dsd_fast.save_model(model, tmp_path / f"{family}.safetensors",
                                   extra_metadata=meta or None))


def _image(tmp_path) -> str:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(7)
    img = rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)
    img[8:22, 10:30] //= 3                                  # a darker blob
    Image.fromarray(img).save(folder / "case.png")
    return str(folder / "case.png")


def _cli_mask(tmp_path, image: str, model: str, *flags) -> np.ndarray:
    out = tmp_path / "out"
    assert main(["segment", image, "-o", str(out), "--checkpoint", model, "-q",
                 "--no-report", *flags]) == 0
    return np.array(Image.open(out / "case_mask.png")) > 0


@pytest.mark.parametrize("family, flags, api", [
    ("dermosegdiff", ["--steps", "2", "--ensemble", "3"], dict(steps=2, ensemble=3)),
    ("dermosegdiff", ["--steps", "2", "--ensemble", "3", "--fusion", "staple"],
     dict(steps=2, ensemble=3, fusion="staple")),
    ("medsegdiff", ["--steps", "2", "--ensemble", "2"], dict(steps=2, ensemble=2)),
    ("medsegdiff-official", ["--steps", "2", "--ensemble", "2", "--sampler", "dpmpp"],
     dict(steps=2, ensemble=2, sampler="dpmpp")),
    ("diffseg", ["--ensemble", "3"], dict(ensemble=3)),
    ("diffseg", ["--ensemble", "3", "--crop", "full"], dict(ensemble=3, crop="full")),
])
def test_the_command_line_writes_the_api_mask(tmp_path, family, flags, api):
    image, model = _image(tmp_path), _model_file(tmp_path, family)
    cli = _cli_mask(tmp_path, image, model, *flags)
    res = dsd_fast.load(model).segment(image, noise_keys=["case"], batch_size=1, **api)[0]
    np.testing.assert_array_equal(cli, res.mask)
    prob = np.array(Image.open(tmp_path / "out" / "case_prob.png")) / 65535
    np.testing.assert_allclose(prob, res.probability, atol=1 / 65535)


@pytest.mark.parametrize("family, flags, api", [
    ("dermosegdiff", ["--steps", "2", "--ensemble", "3", "--crop", "zoom"],
     dict(steps=2, ensemble=3, crop="zoom")),
    ("medsegdiff", ["--steps", "6", "--ensemble", "2", "--crop", "zoom"],
     dict(steps=6, ensemble=2, crop="zoom")),
])
def test_the_command_line_zooms_as_the_api_does(tmp_path, family, flags, api):
    """crop="zoom": the command line crops pass 2's box from the image as segment() reads
    it, so both give the same box, mask and probability."""
    image, model = _image(tmp_path), _model_file(tmp_path, family)
    cli = _cli_mask(tmp_path, image, model, *flags)
    res = dsd_fast.load(model).segment(image, noise_keys=["case"], batch_size=1, **api)[0]
    assert res.zoom["box"] is not None                   # pass 2 ran: there is a box
    np.testing.assert_array_equal(cli, res.mask)
    prob = np.array(Image.open(tmp_path / "out" / "case_prob.png")) / 65535
    np.testing.assert_allclose(prob, res.probability, atol=1 / 65535)


def test_a_centre_crop_pair_marks_nothing_outside_its_crop_on_the_command_line(tmp_path):
    """The DiffSeg pair saved with crop="center": outside the crop box the command line's
    mask is background, as the API's (the command line resized the whole image before)."""
    image, model = _image(tmp_path), _model_file(tmp_path, "diffseg")
    cli = _cli_mask(tmp_path, image, model, "--ensemble", "2")
    # 30 x 44, S = 16: the centre crop keeps the middle 30 of the 44 columns
    assert not cli[:, :6].any() and not cli[:, -6:].any()


def test_the_file_s_mask_clean_up_applies_on_the_command_line(tmp_path):
    """A model file saying postprocess=largest: the command line writes the cleaned mask."""
    image = _image(tmp_path)
    model = _model_file(tmp_path, "dermosegdiff", postprocess="largest")
    cli = _cli_mask(tmp_path, image, model, "--steps", "2", "--ensemble", "3")
    res = dsd_fast.load(model).segment(image, steps=2, ensemble=3, noise_keys=["case"])[0]
    assert res.fusion.endswith("+largest")
    np.testing.assert_array_equal(cli, res.mask)


def test_a_call_s_crop_overrides_the_pair_s_own(tmp_path):
    """crop= given to a call decides both the model's view and where the result goes: a
    full-frame pair asked for crop="center" equals a centre-crop pair (the view used to
    follow the pair's own crop while the result was placed by the call's)."""
    fam = get_family("diffseg")
    config = fam.configs[SMALL["diffseg"]]
    torch.manual_seed(3)
    have, no = fam.build_reference(config).eval(), fam.build_reference(config).eval()
    img = torch.rand(3, 30, 44, generator=torch.Generator().manual_seed(1))
    asked = DiffSegPipeline(have, no, crop="full").segment(img, crop="center", ensemble=2)[0]
    own = DiffSegPipeline(have, no, crop="center").segment(img, ensemble=2)[0]
    np.testing.assert_array_equal(asked.probability, own.probability)
    back = DiffSegPipeline(have, no, crop="center").segment(img, crop="full", ensemble=2)[0]
    full = DiffSegPipeline(have, no, crop="full").segment(img, ensemble=2)[0]
    np.testing.assert_array_equal(back.probability, full.probability)


def test_a_run_records_its_family_options(tmp_path):
    """results.json's settings name the fusion and sampler a run used, so a resumed run with
    other options says which finished images were made otherwise."""
    import json
    image, model = _image(tmp_path), _model_file(tmp_path, "dermosegdiff")
    _cli_mask(tmp_path, image, model, "--steps", "2", "--ensemble", "3", "--fusion", "staple",
              "--sampler", "dpmpp")
    settings = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]
    assert settings["fusion"] == "staple" and settings["sampler"] == "dpmpp"
    assert "refine" not in settings and "crop" not in settings


def test_a_file_s_zoom_runs_and_is_recorded_on_the_command_line(tmp_path):
    """A model file whose metadata says crop=zoom: without --crop the command line zooms as
    segment() does by default, and results.json records the crop and each image's box."""
    import json
    image = _image(tmp_path)
    model = _model_file(tmp_path, "dermosegdiff", crop="zoom")
    cli = _cli_mask(tmp_path, image, model, "--steps", "2", "--ensemble", "3")
    res = dsd_fast.load(model).segment(image, steps=2, ensemble=3, noise_keys=["case"])[0]
    assert res.zoom["box"] is not None
    np.testing.assert_array_equal(cli, res.mask)
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    assert out["settings"]["crop"] == "zoom"
    rec = out["images"][0]
    assert {k: rec["zoom"][k] for k in res.zoom} == res.zoom       # and pass 1's input
