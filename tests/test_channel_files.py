"""N-channel inputs as files on the command line (#35 item 1): `dsd-fast segment DIR` finds
`.npy` arrays, multi-page TIFF channel stacks and channel folders (one file per channel,
`<prefix>_c0.png` .. `<prefix>_c{N-1}.png`) for an N-channel model, writes the usual
outputs with masks equal to the API's, and records an input of another channel count as a
failed image while the run goes on. The API reads channel folders as one image."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import dsd_fast
from dsd_fast.channels import channel_files, is_channel_folder, read_channels
from dsd_fast.cli import main
from dsd_fast.images import ImageInputError, MultiFrameWarning

from conftest import channels_pipe

FAST = ["--steps", "2", "--ensemble", "2", "-q"]
API_FAST = {"steps": 2, "ensemble": 2}


def _stack(h=18, w=22, n=4, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, n), dtype=np.uint8)


def _save_tiff_pages(path, stack: np.ndarray) -> None:
    pages = [Image.fromarray(np.ascontiguousarray(stack[..., c])) for c in range(stack.shape[2])]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def _save_channel_folder(folder, stack: np.ndarray, prefix: str = "case7") -> None:
    folder.mkdir()
    for c in range(stack.shape[2]):
        Image.fromarray(np.ascontiguousarray(stack[..., c])).save(folder / f"{prefix}_c{c}.png")


def test_channel_folders_are_one_image_in_channel_order(tmp_path):
    stack = _stack()
    _save_channel_folder(tmp_path / "case7", stack)
    assert is_channel_folder(tmp_path / "case7")
    chw, alpha = read_channels(str(tmp_path / "case7"))
    assert not alpha and chw.shape == (4, 18, 22)
    np.testing.assert_array_equal((chw * 255).round().byte().permute(1, 2, 0).numpy(), stack)
    # the same pixels as an array give the same mask from the API
    pipe = channels_pipe(4)
    a = pipe.segment(str(tmp_path / "case7"), noise_keys=["k"], **API_FAST)[0]
    b = pipe.segment(stack, noise_keys=["k"], **API_FAST)[0]
    np.testing.assert_array_equal(a.probability, b.probability)
    # names without a prefix, c10 sorting after c9 (numbers, not text)
    many = tmp_path / "many"
    many.mkdir()
    for c in range(11):
        Image.fromarray(np.full((4, 5), c, np.uint8)).save(many / f"c{c}.png")
    order = [p.name for p in channel_files(many)]
    assert order[9:] == ["c9.png", "c10.png"]


def test_malformed_channel_folders_say_what_is_wrong(tmp_path):
    stack = _stack()
    _save_channel_folder(tmp_path / "gap", stack)
    (tmp_path / "gap" / "case7_c2.png").unlink()
    with pytest.raises(ImageInputError, match=r"numbered c0 \.\. c2, each once; found c0, c1, c3"):
        read_channels(str(tmp_path / "gap"))
    _save_channel_folder(tmp_path / "rgb", stack[..., :2])
    Image.fromarray(stack[..., :3]).save(tmp_path / "rgb" / "case7_c2.png")
    with pytest.raises(ImageInputError, match="case7_c2.png has 3 channels"):
        read_channels(str(tmp_path / "rgb"))
    _save_channel_folder(tmp_path / "sizes", stack[..., :2])
    Image.fromarray(stack[:10, :, 2]).save(tmp_path / "sizes" / "case7_c2.png")
    with pytest.raises(ImageInputError, match=r"case7_c2.png is \(10, 22\), channel 0 \(18, 22\)"):
        read_channels(str(tmp_path / "sizes"))
    # other names, or two prefixes, are no channel folder (a folder of images)
    _save_channel_folder(tmp_path / "two", stack[..., :2])
    _save_channel_folder(tmp_path / "two" / "sub", stack[..., :2])
    assert not is_channel_folder(tmp_path / "two")
    mixed = tmp_path / "mixed"
    _save_channel_folder(mixed, stack[..., :2], prefix="a")
    Image.fromarray(stack[..., 0]).save(mixed / "b_c2.png")
    assert not is_channel_folder(mixed)
    with pytest.raises(ImageInputError, match="one file per channel"):
        read_channels(str(mixed))


def test_a_channel_stack_is_not_an_image_with_alpha(tmp_path):
    """Two .npy channels are two channels: a one-channel model refuses them rather than
    dropping the second as an alpha (as it does for a grey + alpha picture). A 2-page TIFF
    is not the model's 1 channel: its first page, with the multi-frame warning, never a
    silent cut."""
    stack = _stack(n=2)
    _save_tiff_pages(tmp_path / "s.tif", stack)
    np.save(tmp_path / "s.npy", stack)
    gray = channels_pipe(1)
    with pytest.raises(ImageInputError, match="takes 1-channel images, this one has 2"):
        gray.segment(str(tmp_path / "s.npy"), **API_FAST)
    with pytest.warns(MultiFrameWarning, match="2 frames"):
        page1 = gray.segment(str(tmp_path / "s.tif"), noise_keys=["k"], **API_FAST)[0]
    want = gray.segment(stack[..., 0], noise_keys=["k"], **API_FAST)[0]
    np.testing.assert_array_equal(page1.probability, want.probability)
    Image.fromarray(stack, "LA").save(tmp_path / "la.png")          # a picture's alpha
    assert gray.segment(str(tmp_path / "la.png"), **API_FAST)[0].mask.shape == (18, 22)
    # an RGB model: an (H, W, 3) .npy is an RGB image, an (H, W, 4) one is refused
    rgb = channels_pipe(3)
    four = _stack()
    np.save(tmp_path / "rgb.npy", four[..., :3])
    a = rgb.segment(str(tmp_path / "rgb.npy"), noise_keys=["k"], **API_FAST)[0]
    b = rgb.segment(four[..., :3], noise_keys=["k"], **API_FAST)[0]
    np.testing.assert_array_equal(a.probability, b.probability)
    np.save(tmp_path / "four.npy", four)
    with pytest.raises(ImageInputError, match="takes 3-channel images, this one has 4"):
        rgb.segment(str(tmp_path / "four.npy"), **API_FAST)


def test_the_command_line_finds_npy_tiff_stacks_and_channel_folders(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    stacks = {"arr": _stack(seed=1), "pages": _stack(seed=2), "case7": _stack(20, 16, seed=3)}
    np.save(src / "arr.npy", stacks["arr"])
    _save_tiff_pages(src / "pages.tif", stacks["pages"])
    _save_channel_folder(src / "case7", stacks["case7"])
    np.save(src / "three.npy", _stack(n=3, seed=4))            # another channel count
    Image.fromarray(_stack(n=3, seed=5)).save(src / "photo.png")
    model = str(dsd_fast.save_model(channels_pipe(4), tmp_path / "four.safetensors"))
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", model, *FAST]) == 1
    doc = json.loads((out / "results.json").read_text())
    assert sorted(r["key"] for r in doc["images"]) == ["arr", "case7", "pages"]
    failed = {f["input"].rsplit("/", 1)[-1]: f["error"] for f in doc["failed"]}
    assert set(failed) == {"three.npy", "photo.png"}
    assert all("takes 4-channel images, this one has 3 channels" in e
               for e in failed.values())
    pipe = dsd_fast.load(model)
    for key, stack in stacks.items():
        api = pipe.segment(stack, noise_keys=[key], **API_FAST)[0]
        np.testing.assert_array_equal(np.array(Image.open(out / f"{key}_mask.png")) > 0,
                                      api.mask)
        prob = np.array(Image.open(out / f"{key}_prob.png")) / 65535
        np.testing.assert_allclose(prob, api.probability, atol=1e-4)
        overlay = np.array(Image.open(out / f"{key}_overlay.png"))
        assert overlay.shape == (*stack.shape[:2], 3)
    # the .npy's overlay is drawn on its first channel, in grey where no contour or band is
    overlay = np.array(Image.open(out / "arr_overlay.png")).astype(int)
    grey = (overlay[..., 0] == overlay[..., 1]) & (overlay[..., 1] == overlay[..., 2])
    assert np.array_equal(overlay[grey][:, 0], stacks["arr"][..., 0][grey])
    # a re-run skips all three (the channel folder's record matches its files)
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", model, *FAST]) == 1
    again = json.loads((out / "results.json").read_text())
    assert again["counts"]["skipped"] == 3 and again["counts"]["segmented"] == 0
    # rewriting one channel file makes the folder's input new: it is segmented again
    Image.fromarray(stacks["case7"][..., 1] // 2).save(src / "case7" / "case7_c1.png")
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", model, *FAST]) == 1
    third = json.loads((out / "results.json").read_text())
    assert third["counts"]["segmented"] == 1


def test_a_grayscale_model_on_npy_from_the_command_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    gray = _stack(n=1, seed=6)[..., 0]
    np.save(src / "scan.npy", gray.astype(np.float32) / 255)          # float in [0, 1]
    model = str(dsd_fast.save_model(channels_pipe(1), tmp_path / "gray.safetensors"))
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", model, *FAST]) == 0
    api = dsd_fast.load(model).segment(str(src / "scan.npy"), noise_keys=["scan"],
                                       **API_FAST)[0]
    np.testing.assert_array_equal(np.array(Image.open(out / "scan_mask.png")) > 0, api.mask)
