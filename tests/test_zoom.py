"""crop="zoom" (zoom.py, segmenter.py): the box around pass 1's foreground, the paste-back
of pass 2 into pass 1 (pass 3 on the box around pass 2's result: test_zoom_third_pass.py),
pass 1's cheap setting, noise keyed per image, binary and several
classes, a model file whose metadata turns zoom on by default, pass 2's crop bound and the
whole-image pass where pass 1 finds nothing; the CRF's picture for any channel count."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dsd_fast
from dsd_fast.checkpoint import read_metadata, save_model
from dsd_fast.errors import CheckpointError
from dsd_fast.preprocess import to_model_input
from dsd_fast.results import samples_to_class_result, samples_to_result
from dsd_fast.segmenter import zoom_key
from dsd_fast.zoom import Box, crop_image, foreground_bbox, square_box, zoom_box

from conftest import channels_pipe, make_model


def _pipe(config: str = "tiny", seed: int = 0):
    return dsd_fast.pipeline_from_network(make_model(config, seed))


def _mask(h, w, *blocks):
    m = np.zeros((h, w), bool)
    for y0, y1, x0, x1 in blocks:
        m[y0:y1, x0:x1] = True
    return m


# ----------------------------------------------------------------------------- the box

def test_the_box_is_the_square_around_the_component_with_a_30_percent_margin():
    # rows 40..59 (20), columns 50..89 (40): side 40 * 1.6 = 64 around the centre (50, 70)
    m = _mask(100, 200, (40, 60, 50, 90))
    assert foreground_bbox(m) == (40, 50, 60, 90)
    assert zoom_box(m) == Box(18, 38, 64, 64)


def test_the_box_is_moved_inside_the_image_and_clipped_to_it():
    # a 10 x 10 corner object: side 16 would start at row -3 and end past column 200
    assert zoom_box(_mask(100, 200, (0, 10, 190, 200))) == Box(0, 184, 16, 16)
    # 20 x 30 in a 30 x 44 image: side 48 is cut to the image's 30 rows and 44 columns
    assert zoom_box(_mask(30, 44, (5, 25, 10, 40))) == Box(0, 0, 30, 44)
    # the model's input size as the least side: 4 x 4 -> 6.4, raised to 16
    assert zoom_box(_mask(100, 100, (48, 52, 48, 52)), min_side=16) == Box(42, 42, 16, 16)
    assert zoom_box(_mask(100, 100, (48, 52, 48, 52))) == Box(47, 47, 6, 6)


def test_the_box_follows_the_largest_component_and_the_union_of_classes():
    m = _mask(100, 100, (10, 20, 10, 20), (60, 90, 50, 70))     # 100 px and 600 px
    assert foreground_bbox(m) == (60, 50, 90, 70)
    disc = _mask(80, 80, (20, 50, 30, 60))
    cup = _mask(80, 80, (30, 40, 40, 50))
    assert foreground_bbox(np.stack([disc, cup])) == (20, 30, 50, 60)    # nested: the disc
    left, right = _mask(80, 80, (10, 20, 10, 20)), _mask(80, 80, (10, 20, 20, 30))
    assert foreground_bbox(np.stack([left, right])) == (10, 10, 20, 30)  # side by side


def test_an_empty_mask_has_no_box():
    assert foreground_bbox(np.zeros((5, 7), bool)) is None
    assert zoom_box(np.zeros((2, 5, 7), bool)) is None


def test_square_box_shift_and_crop_of_a_reduced_picture():
    assert square_box((40, 40, 60, 60), (100, 100), margin=0.5, shift=(5.0, -5.0)) \
        == Box(35, 25, 40, 40)
    img = torch.arange(2 * 10 * 20, dtype=torch.float32).view(2, 10, 20)
    box = Box(4, 6, 8, 10)
    assert torch.equal(crop_image(img, (10, 20), box), img[:, 4:12, 6:16])
    # the picture at half the result's size: the box halved, outward (rows 1..3.5 -> 1..4)
    half = img[:, ::2, ::2]
    assert torch.equal(crop_image(half, (10, 20), Box(2, 6, 5, 10)), half[:, 1:4, 3:8])


# ----------------------------------------------------------------------------- the passes

def _patched(pipe, monkeypatch, k: int = 1):
    """pipe.draw replaced by a known pattern: pass 1 (the image's key) a block of the view,
    passes 2 and 3 (key + "#zoom", "#zoom2") member e = -0.5 + 0.2 e everywhere. Records
    each call."""
    calls = []

    def draw(views, keys, opts):
        calls.append(dict(views=views.clone(), keys=list(keys), steps=opts.steps,
                          ensemble=opts.ensemble, spacing=opts.spacing, sampler=opts.sampler))
        n, e, s = views.shape[0], opts.ensemble, views.shape[-1]
        out = torch.full((n, e, k, s, s), -1.0)
        for i, key in enumerate(keys):
            if "#zoom" in str(key):
                out[i] = (-0.5 + 0.2 * torch.arange(e, dtype=torch.float32)).view(e, 1, 1, 1)
            else:
                out[i, :, :, 4:8, 10:14] = 1.0
                if k > 1:
                    out[i, :, 1, 4:8, 10:14] = -1.0      # the second class: nothing
        return out if k > 1 else out[:, :, 0]
    monkeypatch.setattr(pipe, "draw", draw)
    return calls


def test_pass_2_lands_in_the_box_and_pass_1_stays_outside(monkeypatch):
    pipe = _pipe()
    calls = _patched(pipe, monkeypatch)
    img = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0))
    res = pipe.segment(img, crop="zoom", steps=10, ensemble=3, noise_keys=["im"],
                       postprocess="none")[0]
    # pass 1: min(5, 3) members, 5 trailing DDIM steps; pass 2: the call's 10 x 3
    assert [(c["keys"], c["steps"], c["ensemble"]) for c in calls] \
        == [(["im"], 5, 3), (["im#zoom"], 10, 3)]
    assert calls[0]["spacing"] == "trailing" and calls[1]["spacing"] == "leading"
    # pass 1's result as segment() makes it from the pattern; the box around its mask
    coarse = torch.full((3, 16, 16), -1.0)
    coarse[:, 4:8, 10:14] = 1.0
    want1 = samples_to_result(coarse, (64, 96))
    box = zoom_box(want1.mask, min_side=16)
    # two passes (the default): the record of the box pass 2 ran on
    assert res.zoom == {"box": box.as_list(), "input": [box.height, box.width]}
    # view rows 4..7 of 16 -> image rows 16..31; columns 10..13 -> 60..83 (about)
    assert box.contains((16, 60, 32, 84)) and box.height == box.width
    # pass 2 saw the crop of the image under the box, as any image's view
    np.testing.assert_allclose(calls[1]["views"][0],
                               to_model_input([img[:, box.slices[0], box.slices[1]]],
                                              pipe.preprocessing)[0], atol=1e-6)
    inside = np.zeros((64, 96), bool)
    inside[box.slices] = True
    # inside: pass 2's members -0.5, -0.3, -0.1 -> probability 0.35, std of .25, .35, .45
    np.testing.assert_allclose(res.probability[inside], 0.35, atol=1e-6)
    np.testing.assert_allclose(res.std[inside], np.std([0.25, 0.35, 0.45]), atol=1e-6)
    assert not res.mask[inside].any()
    # outside: pass 1's maps and mask, untouched
    np.testing.assert_array_equal(res.probability[~inside], want1.probability[~inside])
    np.testing.assert_array_equal(res.mask[~inside], want1.mask[~inside])
    np.testing.assert_array_equal(res.std[~inside], want1.std[~inside])
    np.testing.assert_allclose(res.entropy, dsd_fast.results.entropy_f32(res.probability))


def test_samples_are_the_finer_passes_inside_and_pass_1_s_mask_outside(monkeypatch):
    """7 members: passes 2 and 3 find their whole box (mean 0.1 -> 0.55), so pass 3 runs
    on B, around all of A and larger (tests/test_zoom_third_pass.py: B inside A)."""
    pipe = _pipe()
    calls = _patched(pipe, monkeypatch)
    img = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0))
    res = pipe.segment(img, crop="zoom", zoom_passes=3, steps=10, ensemble=7,
                       noise_keys=["im"], return_samples=True)[0]
    box = Box(*res.zoom["box"])
    assert [c["keys"] for c in calls][-1] == ["im#zoom2"]
    a = Box(*res.zoom["pass2_box"])
    assert a != box and box.contains((a.top, a.left, a.top + a.height, a.left + a.width))
    assert res.samples.shape == (7, 64, 96)
    inner = res.samples[:, box.slices[0], box.slices[1]]
    # members -0.5 + 0.2 e: (x + 1) / 2 > 0.5 from e = 3 on, everywhere in the box
    np.testing.assert_array_equal(inner.reshape(7, -1).all(1), [0, 0, 0, 1, 1, 1, 1])
    assert not inner[:3].any()
    outside = np.ones((64, 96), bool)
    outside[box.slices] = False
    for member in res.samples:
        np.testing.assert_array_equal(member[outside], res.mask[outside])


def test_several_classes_are_pasted_class_by_class(monkeypatch):
    pipe = _pipe("tiny_2class")
    assert pipe.mask_channels == 2
    calls = _patched(pipe, monkeypatch, k=2)
    img = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0))
    res = pipe.segment(img, crop="zoom", steps=10, ensemble=3, noise_keys=["im"])[0]
    coarse = torch.full((3, 2, 16, 16), -1.0)
    coarse[:, 0, 4:8, 10:14] = 1.0
    want1 = samples_to_class_result(coarse, (64, 96), pipe.classes)
    box = zoom_box(want1.class_regions(), min_side=16)
    assert res.zoom == {"box": box.as_list(), "input": [box.height, box.width]}
    assert len(calls) == 2
    assert res.probability.shape == res.std.shape == (2, 64, 96)
    inside = np.zeros((64, 96), bool)
    inside[box.slices] = True
    np.testing.assert_allclose(res.probability[:, inside], 0.35, atol=1e-6)
    np.testing.assert_array_equal(res.probability[:, ~inside], want1.probability[:, ~inside])
    np.testing.assert_array_equal(res.mask[~inside], want1.mask[~inside])
    assert (res.mask[inside] == 0).all() and res.classes == pipe.classes


def test_pass_1_setting():
    """5 members x 5 trailing DDIM steps, or the call's own where it is cheaper; the DDPM
    sampler (T steps) is never pass 1's; no CRF in pass 1."""
    pipe = _pipe()

    def first(**kw):
        o = pipe.zoom_pass1(pipe.resolve(crop="zoom", **kw))
        return o.sampler, o.steps, o.ensemble, o.spacing, o.refine
    assert first() == ("ddim", 5, 5, "trailing", None)                  # classic 25 x 5
    assert first(steps=3, ensemble=8) == ("ddim", 3, 5, "leading", None)
    assert first(steps=50, ensemble=2) == ("ddim", 5, 2, "trailing", None)
    assert first(sampler="ddpm", ensemble=4) == ("ddim", 5, 4, "trailing", None)
    assert first(sampler="dpmpp", steps=4, ensemble=6) == ("dpmpp", 4, 5, "leading", None)


def test_zoom_needs_the_pictures_and_is_for_mask_diffusion_models():
    pipe = _pipe()
    opts = pipe.resolve(crop="zoom", steps=1, ensemble=1)
    with pytest.raises(ValueError, match="needs images="):
        pipe.segment_views([torch.rand(3, 16, 16)], [(16, 16)], ["a"], opts)
    from dsd_fast.families import get_family
    from dsd_fast.families.diffseg import DiffSegPipeline
    fam = get_family("diffseg")
    cfg = fam.configs["diffseg_tiny"]
    pair = DiffSegPipeline(fam.build_reference(cfg).eval(), fam.build_reference(cfg).eval())
    with pytest.raises(ValueError, match="crop='zoom' is not available"):
        pair.resolve(crop="zoom")
    with pytest.raises(ValueError, match="crop must be one of"):
        DiffSegPipeline(pair.have, pair.no, crop="zoom")


# ----------------------------------------------------------------------------- noise keys

def test_an_image_s_zoomed_result_does_not_depend_on_the_others_in_the_call():
    pipe = _pipe()
    imgs = [torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
    pair = pipe.segment(imgs, crop="zoom", steps=3, ensemble=2, noise_keys=["a", "b"],
                        batch_size=2, backend="reference")
    alone = pipe.segment(imgs[1], crop="zoom", steps=3, ensemble=2, noise_keys=["b"],
                         backend="reference")[0]
    assert pair[1].zoom["box"] is not None and pair[1].zoom == alone.zoom
    # same chains in both passes; only oneDNN's batch-size-dependent rounding differs
    np.testing.assert_allclose(pair[1].probability, alone.probability, atol=1e-5)
    swapped = pipe.segment(imgs[::-1], crop="zoom", steps=3, ensemble=2,
                           noise_keys=["b", "a"], batch_size=2, backend="reference")
    np.testing.assert_allclose(swapped[0].probability, alone.probability, atol=1e-5)
    other = pipe.segment(imgs[1], crop="zoom", steps=3, ensemble=2, noise_keys=["c"],
                         backend="reference")[0]
    assert not np.allclose(other.probability, alone.probability)     # the key matters
    assert zoom_key("b") == "b#zoom" and zoom_key(7) == "7#zoom"


# ----------------------------------------------------------------------------- the file

def test_a_file_saying_crop_zoom_zooms_by_default_and_crop_full_overrides(tmp_path):
    pipe = _pipe()
    plain = save_model(pipe.model, tmp_path / "plain.safetensors")
    zoomed = save_model(pipe.model, tmp_path / "zoom.safetensors",
                        extra_metadata={"crop": "zoom"})
    loaded = dsd_fast.load(zoomed)
    assert loaded.crop_default == "zoom" and loaded.choices().crops == ("zoom", "full")
    assert dsd_fast.load(plain).choices().crops == ("full", "zoom")
    img = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(1))
    kw = dict(steps=3, ensemble=2, noise_keys=["a"])
    own = loaded.segment(img, **kw)[0]
    asked = dsd_fast.load(plain).segment(img, crop="zoom", **kw)[0]
    assert own.zoom is not None and own.zoom == asked.zoom
    np.testing.assert_array_equal(own.probability, asked.probability)
    full = loaded.segment(img, crop="full", **kw)[0]
    base = dsd_fast.load(plain).segment(img, **kw)[0]
    assert full.zoom is None and base.zoom is None
    np.testing.assert_array_equal(full.probability, base.probability)
    # saved again, the pipeline keeps its crop
    again = save_model(loaded, tmp_path / "again.safetensors")
    assert read_metadata(again)["crop"] == "zoom"


def test_a_file_s_crop_must_be_one_its_model_accepts(tmp_path):
    pipe = _pipe()
    bad = save_model(pipe.model, tmp_path / "bad.safetensors",
                     extra_metadata={"crop": "center"})
    with pytest.raises(CheckpointError, match="crop metadata 'center'"):
        dsd_fast.load(bad)


def test_the_command_line_zooms_a_model_of_several_classes_as_the_api(tmp_path):
    """A two-class model with --crop zoom: the label map and each class's probability map
    the command line writes are the API's, and results.json holds the box."""
    import json

    from PIL import Image

    from dsd_fast.cli import main
    pipe = _pipe("tiny_2class", seed=3)
    pipe.class_names = ("disc", "cup")
    model = str(save_model(pipe, tmp_path / "two.safetensors"))
    folder = tmp_path / "in"
    folder.mkdir()
    img = np.random.default_rng(7).integers(0, 255, (40, 52, 3), dtype=np.uint8)
    img[8:22, 10:30] //= 3
    Image.fromarray(img).save(folder / "eye.png")
    out = tmp_path / "out"
    assert main(["segment", str(folder / "eye.png"), "-o", str(out), "--checkpoint", model,
                 "--steps", "2", "--ensemble", "3", "--crop", "zoom", "-q"]) == 0
    res = dsd_fast.load(model).segment(str(folder / "eye.png"), steps=2, ensemble=3,
                                       crop="zoom", noise_keys=["eye"], batch_size=1)[0]
    assert res.zoom["box"] is not None
    np.testing.assert_array_equal(np.array(Image.open(out / "eye_labels.png")), res.mask)
    for c, name in enumerate(("disc", "cup")):
        prob = np.array(Image.open(out / f"eye_prob_{name}.png")) / 65535
        np.testing.assert_allclose(prob, res.probability[c], atol=1 / 65535)
    rec = json.loads((out / "results.json").read_text())["images"][0]
    assert {k: rec["zoom"][k] for k in res.zoom} == res.zoom       # and pass 1's input


# ----------------------------------------------------------------------------- the CRF

def _spy_crf(monkeypatch):
    """dsd_fast.crf.diffseg_refine recording the picture each CRF refines on."""
    import dsd_fast.crf as crf
    seen, real = [], crf.diffseg_refine

    def spy(image_rgb, sample_probs, rng):
        seen.append(np.array(image_rgb))
        return real(image_rgb, sample_probs, rng)
    monkeypatch.setattr(crf, "diffseg_refine", spy)
    return seen


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("crop", ["full", "zoom"])
def test_the_crf_refines_any_channel_count_on_the_image_as_a_viewer_sees_it(
        monkeypatch, channels, crop):
    """refine="crf" on a model of 1 or N channels: the CRF's picture is
    channels.channel_picture of the image (grey, or the first of N channels, replicated),
    of pass 2's box under zoom. It raised (a 1-channel picture is no (H, W, 3) uint8)."""
    pytest.importorskip("pydensecrf.densecrf")
    from dsd_fast.channels import channel_picture
    pipe = channels_pipe(channels)
    calls = _patched(pipe, monkeypatch)
    seen = _spy_crf(monkeypatch)
    img = torch.rand(channels, 64, 96, generator=torch.Generator().manual_seed(0))
    res = pipe.segment(img, crop=crop, refine="crf", steps=2, ensemble=3,
                       noise_keys=["im"])[0]
    assert res.fusion == "mean+crf" and len(seen) == 1
    part = img if crop == "full" else img[:, Box(*res.zoom["box"]).slices[0],
                                          Box(*res.zoom["box"]).slices[1]]
    np.testing.assert_array_equal(seen[0], channel_picture(part))
    assert seen[0].shape == (*part.shape[1:], 3) and len(calls) == (2 if crop == "zoom" else 1)


def test_the_crf_takes_an_image_three_pixels_wide():
    """A (3, H, 3) picture was read as (H, W, 3) = (3, H, 3) and refused by the CRF."""
    pytest.importorskip("pydensecrf.densecrf")
    pipe = channels_pipe(1)
    img = torch.rand(1, 20, 3, generator=torch.Generator().manual_seed(0))
    res = pipe.segment(img, refine="crf", steps=2, ensemble=3, noise_keys=["thin"])[0]
    assert res.mask.shape == (20, 3) and res.fusion == "mean+crf"


# ----------------------------------------------------------------------------- pass 2's input

def test_nothing_found_in_pass_1_segments_the_whole_image_at_the_call_s_setting(monkeypatch):
    """Pass 1 found nothing: pass 2 runs on the whole image at the call's setting with the
    image's own key, so the result is crop="full"'s (8 members, refined), plus a note."""
    pytest.importorskip("pydensecrf.densecrf")
    pipe = _pipe()
    calls = []

    def draw(views, keys, opts):
        calls.append((list(keys), opts.steps, opts.ensemble))
        e = torch.linspace(-0.9, 0.3, opts.ensemble).view(1, -1, 1, 1)
        return (e * (views[:, :1] > 2)).expand(views.shape[0], -1, 16, 16).clone() - 0.05
    monkeypatch.setattr(pipe, "draw", draw)
    img = torch.rand(3, 30, 40, generator=torch.Generator().manual_seed(2))
    kw = dict(noise_keys=["x"], steps=10, ensemble=8, refine="crf", return_samples=True)
    res = pipe.segment(img, crop="zoom", **kw)[0]
    assert calls == [(["x"], 5, 5), (["x"], 10, 8)]          # pass 1, then the whole image
    assert res.zoom["box"] is None and "found no foreground" in res.zoom["note"]
    full = pipe.segment(img, crop="full", **kw)[0]
    assert res.samples.shape[0] == 8 and res.fusion == full.fusion == "mean+crf"
    for name in ("mask", "probability", "std", "samples"):
        np.testing.assert_array_equal(getattr(res, name), getattr(full, name))


def test_pass_2_s_crop_is_reduced_to_what_its_view_needs(monkeypatch):
    """A box larger than 16 S on a side: pass 2 gets the crop reduced to at most (16 S)^2
    pixels (aspect kept), never the box at full resolution; res.zoom says what it got."""
    from dsd_fast.zoom import crop_limit, fit_pixels
    pipe = _pipe()
    seen = []
    real_view = pipe.view

    def view(chw, opts=None):
        seen.append(tuple(chw.shape))
        return real_view(chw, opts)
    monkeypatch.setattr(pipe, "view", view)

    def draw(views, keys, opts):                  # pass 1: all but a 1-pixel border
        out = torch.full((views.shape[0], opts.ensemble, 16, 16), -1.0)
        out[:, :, 1:15, 1:15] = 1.0
        return out
    monkeypatch.setattr(pipe, "draw", draw)
    img = torch.rand(3, 300, 280, generator=torch.Generator().manual_seed(0))
    res = pipe.segment(img, crop="zoom", steps=2, ensemble=2, noise_keys=["big"])[0]
    limit = crop_limit(16)
    assert limit == 256 ** 2
    box = Box(*res.zoom["box"])
    assert box.height * box.width > limit                       # the box itself is larger
    assert seen[0] == (3, 300, 280)                              # pass 1's view
    h, w = seen[1][1:]
    assert h * w <= limit and res.zoom["input"] == [h, w]
    assert abs(h / w - box.height / box.width) < 0.02           # the aspect kept
    want = fit_pixels(img[:, box.slices[0], box.slices[1]], limit)
    assert tuple(want.shape[1:]) == (h, w)
    small = torch.rand(3, 10, 20)
    assert fit_pixels(small, 200) is small                        # within the bound: as is
