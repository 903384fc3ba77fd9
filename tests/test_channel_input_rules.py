"""What is taken as a channel input (#35 review): a folder is a channel folder only when its
files are single-channel (read from their headers) and numbered c0 .. c{N-1}; a stack of
channels (channel files, TIFF pages, .npy channels) is never converted as if it were a
colour picture; a multi-page TIFF is its channels when its page count is the model's, else
its first page with a warning, for every model; a folder lists only the .npy files shaped
like images and not named like masks, the others skipped with one note."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import dsd_fast
from dsd_fast.channels import ChannelNote, is_channel_folder, match_channels, npy_shape
from dsd_fast.cli import main
from dsd_fast.cli.discover import SkippedInputNote, discover
from dsd_fast.images import ImageInputError, MultiFrameWarning

from conftest import channels_pipe

FAST = ["--steps", "2", "--ensemble", "2", "-q"]
API_FAST = {"steps": 2, "ensemble": 2}


def _stack(h=18, w=22, n=3, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, n), dtype=np.uint8)


def _planes(stack: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(np.ascontiguousarray(stack[..., c])) for c in range(stack.shape[2])]


def _save_tiff_pages(path, stack: np.ndarray) -> None:
    pages = _planes(stack)
    pages[0].save(path, save_all=True, append_images=pages[1:])


def _save_channel_folder(folder: Path, stack: np.ndarray, prefix: str = "case7") -> None:
    folder.mkdir(parents=True)
    for c, plane in enumerate(_planes(stack)):
        plane.save(folder / f"{prefix}_c{c}.png")


# ------------------------------------------------------------------ 3: channel folders
def test_rgb_photos_named_like_channels_are_images_not_a_channel_folder(tmp_path):
    photos = tmp_path / "cf" / "photos"
    photos.mkdir(parents=True)
    for k in range(2):
        Image.fromarray(_stack(seed=k)).save(photos / f"IMG_c{k}.png")
    assert not is_channel_folder(photos)
    assert sorted(im.key for im in discover([str(tmp_path / "cf")], recursive=True).images) \
        == ["photos/IMG_c0", "photos/IMG_c1"]
    model = str(dsd_fast.save_model(channels_pipe(3), tmp_path / "rgb.safetensors"))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "cf"), "-r", "-o", str(out), "--checkpoint",
                 model, *FAST]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert sorted(r["key"] for r in doc["images"]) == ["photos/IMG_c0", "photos/IMG_c1"]
    assert doc["failed"] == []


def test_a_channel_folder_needs_single_channel_files_numbered_from_c0(tmp_path):
    stack = _stack(n=3)
    _save_channel_folder(tmp_path / "ok", stack)
    assert is_channel_folder(tmp_path / "ok")
    # 16-bit grey and float planes are single-channel too; .npy planes (H, W) or (H, W, 1)
    sixteen = tmp_path / "sixteen"
    sixteen.mkdir()
    for c in range(2):
        Image.fromarray(stack[..., c].astype(np.uint16) * 257).save(sixteen / f"c{c}.png")
    assert is_channel_folder(sixteen)
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "s_c0.npy", stack[..., 0])
    np.save(npy / "s_c1.npy", stack[..., 1:2])
    assert is_channel_folder(npy)
    np.save(npy / "s_c1.npy", stack[..., :2])                  # a 2-channel plane: no
    assert not is_channel_folder(npy)
    # a gap in the numbering, or a palette / RGB / multi-page file among them: no
    gap = tmp_path / "gap"
    _save_channel_folder(gap, stack)
    (gap / "case7_c1.png").unlink()
    assert not is_channel_folder(gap)
    rgb = tmp_path / "rgb"
    _save_channel_folder(rgb, stack[..., :1])
    Image.fromarray(stack).save(rgb / "case7_c1.png")
    assert not is_channel_folder(rgb)
    pal = tmp_path / "pal"
    _save_channel_folder(pal, stack[..., :1])
    Image.fromarray(stack[..., 1]).convert("P").save(pal / "case7_c1.png")
    assert not is_channel_folder(pal)
    pages = tmp_path / "pages"
    _save_channel_folder(pages, stack[..., :1])
    _save_tiff_pages(pages / "case7_c1.tif", stack[..., 1:])
    assert not is_channel_folder(pages)
    # a corrupt file is no channel file (listed as an image, it fails on its own)
    bad = tmp_path / "bad"
    _save_channel_folder(bad, stack[..., :1])
    (bad / "case7_c1.png").write_bytes(b"not a png")
    assert not is_channel_folder(bad)


def test_telling_a_channel_folder_reads_headers_only(tmp_path, monkeypatch):
    _save_channel_folder(tmp_path / "case7", _stack(n=3))
    np.save(tmp_path / "case7" / "case7_c3.npy", _stack(n=1)[..., 0])

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded pixels to tell a channel folder")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(np, "load", no_decode)
    assert is_channel_folder(tmp_path / "case7")


# ------------------------------------------------------------------ 4: stacks vs colour
def test_a_stack_of_three_channels_is_not_converted_as_rgb(tmp_path):
    rgb = torch.rand(3, 5, 6)
    with pytest.raises(ImageInputError, match="takes 1-channel images, this one has 3 "
                                              "channels"):
        match_channels(rgb, 1, stacked=True)
    assert match_channels(rgb, 1)[1].startswith("RGB converted to luma")   # a picture
    # one channel of a stack (a (H, W) .npy) is grey as any grey image: replicated
    assert "replicated" in match_channels(rgb[:1], 3, stacked=True)[1]
    stack = _stack(n=3)
    _save_channel_folder(tmp_path / "case7", stack)
    np.save(tmp_path / "s.npy", stack)
    gray = channels_pipe(1)
    for name in ("case7", "s.npy"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ChannelNote)
            with pytest.raises(ImageInputError, match="takes 1-channel images, this one has 3"
                                                      " channels.*not colours"):
                gray.segment(str(tmp_path / name), **API_FAST)


def test_a_tiff_is_its_channels_when_its_pages_are_the_models(tmp_path):
    """For every model: as many pages as channels -> the pages are the channels (a 3-page
    TIFF for an RGB model equals the 3-file channel folder); otherwise the first page, with
    the multi-frame warning every multi-page picture gets."""
    stack = _stack(n=3)
    _save_tiff_pages(tmp_path / "three.tif", stack)
    _save_channel_folder(tmp_path / "case7", stack)
    rgb = channels_pipe(3)
    want = rgb.segment(stack, noise_keys=["k"], **API_FAST)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MultiFrameWarning)
        for name in ("three.tif", "case7"):
            got = rgb.segment(str(tmp_path / name), noise_keys=["k"], **API_FAST)[0]
            np.testing.assert_array_equal(got.probability, want.probability)
    # a 1-channel model: page 1 of the 3, announced, as the RGB model reads a 4-page TIFF
    gray = channels_pipe(1)
    first = gray.segment(stack[..., 0], noise_keys=["k"], **API_FAST)[0]
    with pytest.warns(MultiFrameWarning, match="3 frames"):
        got = gray.segment(str(tmp_path / "three.tif"), noise_keys=["k"], **API_FAST)[0]
    np.testing.assert_array_equal(got.probability, first.probability)
    _save_tiff_pages(tmp_path / "four.tif", _stack(n=4))
    with pytest.warns(MultiFrameWarning, match="4 frames"):
        rgb.segment(str(tmp_path / "four.tif"), **API_FAST)
    # a 4-channel model given 3 pages is told why one channel came of them
    with pytest.warns(MultiFrameWarning), \
            pytest.raises(ImageInputError, match="takes 4-channel images, this one has 1 "
                                                 "channel.*page 1 of a 3-page TIFF"):
        channels_pipe(4).segment(str(tmp_path / "three.tif"), **API_FAST)


def test_the_command_line_reads_a_three_page_tiff_as_an_rgb_models_channels(tmp_path):
    """The TIFF and the channel folder of the same pixels, each named x: the same outputs,
    equal to the API's on the (H, W, 3) array."""
    stack = _stack(n=3, seed=7)
    (tmp_path / "tiff").mkdir()
    _save_tiff_pages(tmp_path / "tiff" / "x.tif", stack)
    _save_channel_folder(tmp_path / "folder" / "x", stack)
    model = str(dsd_fast.save_model(channels_pipe(3), tmp_path / "rgb.safetensors"))
    want = dsd_fast.load(model).segment(stack, noise_keys=["x"], **API_FAST)[0]
    outputs = {}
    for src in ("tiff", "folder"):
        out = tmp_path / f"out_{src}"
        with warnings.catch_warnings():
            warnings.simplefilter("error", MultiFrameWarning)
            assert main(["segment", str(tmp_path / src), "-o", str(out), "--checkpoint",
                         model, *FAST]) == 0
        np.testing.assert_array_equal(np.array(Image.open(out / "x_mask.png")) > 0, want.mask)
        prob = np.array(Image.open(out / "x_prob.png")) / 65535
        np.testing.assert_allclose(prob, want.probability, atol=1e-4)
        outputs[src] = np.array(Image.open(out / "x_overlay.png"))
    # the TIFF's overlay is drawn on its three pages as RGB, as the folder's
    np.testing.assert_array_equal(outputs["tiff"], outputs["folder"])


# ------------------------------------------------------------------ 5: .npy in folders
def test_a_folder_lists_only_image_shaped_npy_not_masks(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_stack(seed=3)).save(src / "z0.png")
    np.save(src / "train_ids.npy", np.arange(12))                       # 1-D
    mask = np.zeros((18, 22), np.uint8)
    mask[4:12, 5:15] = 1
    np.save(src / "z0_gt.npy", mask)                                    # ground truth
    np.save(src / "z1_Mask.npy", mask)
    np.save(src / "first.npy", _stack(3, 40, 50))                       # channels first
    np.save(src / "points.npy", np.zeros((40, 2), np.float32))          # too narrow
    np.save(src / "z2.npy", _stack(seed=4))                             # an image
    with pytest.warns(SkippedInputNote) as notes:
        found = discover([str(src)])
    assert sorted(im.key for im in found.images) == ["z0", "z2"]
    assert sorted(p.name for p, _ in found.skipped) == [
        "first.npy", "points.npy", "train_ids.npy", "z0_gt.npy", "z1_Mask.npy"]
    assert len(notes) == 1
    note = str(notes[0].message)
    assert "5 .npy files" in note and "(H, W, N)" in note and "mask" in note
    # named explicitly, a file is always tried
    assert [im.key for im in discover([str(src / "z0_gt.npy")]).images] == ["z0_gt"]
    # the command line: the mask is not segmented, the run succeeds, one warning line
    model = str(dsd_fast.save_model(channels_pipe(3), tmp_path / "rgb.safetensors"))
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", model, *FAST]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert sorted(r["key"] for r in doc["images"]) == ["z0", "z2"]


def test_listing_reads_npy_headers_only(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", _stack())
    np.save(tmp_path / "f.npy", np.asfortranarray(_stack(n=1)[..., 0]))
    assert npy_shape(tmp_path / "a.npy") == (18, 22, 3)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    assert npy_shape(tmp_path / "junk.npy") is None

    def no_load(*args, **kwargs):
        raise AssertionError("loaded an array to list a folder")
    monkeypatch.setattr(np, "load", no_load)
    with pytest.warns(SkippedInputNote, match="junk.npy"):
        assert sorted(im.key for im in discover([str(tmp_path)]).images) == ["a", "f"]


def test_npy_shape_errors_say_it_is_read_as_h_w_n(tmp_path):
    np.save(tmp_path / "first.npy", _stack(3, 40, 50))
    np.save(tmp_path / "four_d.npy", np.zeros((2, 3, 18, 22), np.uint8))
    rgb = channels_pipe(3)
    with pytest.raises(ImageInputError, match=r"this one has 50 channels.*read as \(H, W, N\)"
                       ) as e:
        rgb.segment(str(tmp_path / "first.npy"), **API_FAST)
    assert "(C, H, W)" not in str(e.value)
    with pytest.raises(ImageInputError, match=r"read as \(H, W, N\)") as e:
        rgb.segment(str(tmp_path / "four_d.npy"), **API_FAST)
    assert "(C, H, W)" not in str(e.value)


# ------------------------------------------------------------------ 6: line length
@pytest.mark.parametrize("name", ["dsd_fast/channels.py", "dsd_fast/cli/discover.py",
                                  "dsd_fast/volumes/writer.py"])
def test_lines_fit_in_100_characters(name):
    root = Path(__file__).resolve().parents[1]
    long = [i for i, line in enumerate((root / name).read_text().splitlines(), 1)
            if len(line) > 100]
    assert long == [], f"{name}: lines over 100 characters: {long}"
