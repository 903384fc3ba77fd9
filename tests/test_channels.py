"""Images with any channel count (#35 item 1): grayscale models take grayscale files
natively, RGB is converted to luma and grayscale replicated with one note, N-channel models
take (N, H, W) tensors, (H, W, N) arrays, .npy files and N-page TIFFs, and a mismatch names
what the model expects; on the command line a failed image is recorded and the run goes on."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import dsd_fast
from dsd_fast.channels import ChannelNote, match_channels, read_channels
from dsd_fast.cli import main
from dsd_fast.families import find_config
from dsd_fast.images import ImageInputError

from conftest import channels_pipe

FAST = ["--steps", "2", "--ensemble", "2", "-q", "--no-report"]


def _gray(h=20, w=26, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)


def test_luma_replication_and_alpha():
    rgb = torch.rand(3, 5, 6)
    y, note = match_channels(rgb, 1)
    want = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    assert "luma" in note and torch.allclose(y[0], want)
    g3, note = match_channels(y, 3)
    assert "replicated" in note and torch.equal(g3[1], y[0])
    rgba = torch.rand(4, 5, 6)
    assert torch.equal(match_channels(rgba, 3, alpha=True)[0], rgba[:3])
    with pytest.raises(ImageInputError, match="takes 3-channel images, this one has 4"):
        match_channels(rgba, 3)                    # a (4, H, W) tensor is data, not RGBA
    with pytest.raises(ImageInputError, match="takes 4-channel images, this one has 3"):
        match_channels(rgb, 4)


def test_a_grayscale_model_takes_gray_files_natively_and_rgb_as_luma(tmp_path):
    pipe = channels_pipe(1)
    assert pipe.channels == 1
    g = _gray()
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "rgb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # a native grayscale file: no note
        native = pipe.segment(str(tmp_path / "g.png"), steps=2, ensemble=2,
                              noise_keys=["k"])[0]
    with pytest.warns(ChannelNote, match="luma"):
        luma = pipe.segment(str(tmp_path / "rgb.png"), steps=2, ensemble=2,
                            noise_keys=["k"])[0]
    # a gray picture stored as RGB gives the same model input (luma weights sum to 1)
    np.testing.assert_allclose(luma.probability, native.probability, atol=1e-5)
    assert native.mask.shape == (20, 26)
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "g.jpg", quality=95)
    with pytest.warns(ChannelNote):
        assert pipe.segment(str(tmp_path / "g.jpg"), steps=2, ensemble=2)[0].mask.shape \
            == (20, 26)


def test_an_rgb_model_replicates_grayscale_as_it_always_has(tmp_path):
    pipe = channels_pipe(3)
    g = _gray()
    a = pipe.segment(g, steps=2, ensemble=2)[0]
    b = pipe.segment(np.stack([g] * 3, -1), steps=2, ensemble=2)[0]
    np.testing.assert_array_equal(a.probability, b.probability)


def test_a_four_channel_model_takes_tensors_arrays_npy_and_tiff_pages(tmp_path):
    pipe = channels_pipe(4)
    stack = np.random.default_rng(1).integers(0, 255, (18, 22, 4), dtype=np.uint8)
    want = pipe.segment(torch.from_numpy(stack).permute(2, 0, 1).float() / 255,
                        steps=2, ensemble=2, noise_keys=["k"])[0]
    np.save(tmp_path / "s.npy", stack)
    Image.fromarray(stack[..., 0]).save(tmp_path / "s.tif", save_all=True,
                                        append_images=[Image.fromarray(stack[..., c])
                                                       for c in range(1, 4)])
    for item in (stack, str(tmp_path / "s.npy"), str(tmp_path / "s.tif")):
        got = pipe.segment(item, steps=2, ensemble=2, noise_keys=["k"])[0]
        np.testing.assert_array_equal(got.probability, want.probability)
    with pytest.raises(ImageInputError, match="takes 4-channel images, this one has 3"):
        pipe.segment(torch.rand(3, 10, 10), steps=2, ensemble=1)
    assert read_channels(str(tmp_path / "s.tif"))[0].shape == (4, 18, 22)


@pytest.mark.parametrize("config, gray_field, wider", [
    ("tiny_ff", "channels_g", {"dim_x": 16}),
    ("msd_tiny", "input_img_channels", {"dim": 16}),
])
def test_rgb_weights_carry_over_to_a_grayscale_network_exactly(config, gray_field, wider):
    """3 -> 1 channels sums the first image convolution over colours: the gray network on a
    gray image computes what the RGB network computes on it replicated (DermoSegDiff's
    1x1 image stem, MedSegDiff's 7x7 conditioning stem)."""
    fam, rgb_cfg = find_config(config)
    gray_cfg = rgb_cfg.replace(**{gray_field: 1})
    size = rgb_cfg.image_size
    torch.manual_seed(0)
    rgb = fam.build_reference(rgb_cfg).eval()
    gray = fam.build_reference(gray_cfg).eval()
    gray.load_state_dict(fam.adapted_state_dict(rgb.state_dict(), rgb_cfg, gray_cfg))
    x, g, t = torch.randn(2, 1, size, size), torch.rand(2, 1, size, size), torch.tensor([3, 90])
    with torch.no_grad():
        torch.testing.assert_close(gray(x, g, t), rgb(x, g.expand(-1, 3, -1, -1), t),
                                   atol=1e-5, rtol=1e-5)
        # and back: the gray weights spread over three colours give the gray network again
        back = fam.build_reference(rgb_cfg).eval()
        back.load_state_dict(fam.adapted_state_dict(gray.state_dict(), gray_cfg, rgb_cfg))
        torch.testing.assert_close(back(x, g.expand(-1, 3, -1, -1), t), gray(x, g, t),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot start"):
        fam.adapted_state_dict(rgb.state_dict(), rgb_cfg, rgb_cfg.replace(**wider))


def test_command_line_grayscale_model_and_failed_mismatch(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_gray()).save(src / "a.png")
    Image.fromarray(np.stack([_gray(seed=2)] * 3, -1)).save(src / "b.jpg")
    model = str(dsd_fast.save_model(channels_pipe(1), tmp_path / "gray.safetensors"))
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", model, *FAST]) == 0
    api = dsd_fast.load(model).segment(str(src / "a.png"), steps=2, ensemble=2,
                                       noise_keys=["a"])[0]
    np.testing.assert_array_equal(np.array(Image.open(out / "a_mask.png")) > 0, api.mask)
    assert (out / "b_mask.png").is_file()
    # a 3-channel image for a 4-channel model: recorded as failed, the run goes on
    four = str(dsd_fast.save_model(channels_pipe(4), tmp_path / "four.safetensors"))
    out4 = tmp_path / "out4"
    assert main(["segment", str(src), "-o", str(out4), "--checkpoint", four, *FAST]) == 1
    failed = json.loads((out4 / "results.json").read_text())["failed"]
    assert len(failed) == 2 and all("4-channel" in f["error"] for f in failed)


def test_a_grayscale_model_trains_from_rgb_weights(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        Image.fromarray(_gray(16, 16, seed=i)).save(root / "images" / f"s{i}.png")
        m = np.zeros((16, 16), np.uint8)
        m[4:12, 3 + i:11 + i] = 255
        Image.fromarray(m).save(root / "masks" / f"s{i}.png")
    fam, cfg = find_config("tiny_ff")
    torch.manual_seed(0)
    rgb_file = dsd_fast.save_model(fam.build_reference(cfg).eval(), tmp_path / "rgb.safetensors")
    run = tmp_path / "run"
    assert main(["train", "--images", str(root / "images"), "--masks", str(root / "masks"),
                 "--out", str(run), "--config", "tiny_gray", "--steps", "2", "--batch-size",
                 "2", "--val-every", "100", "--threads", "1", "--init-from", str(rgb_file),
                 "-q"]) == 0
    assert "carried over" in capsys.readouterr().out
    pipe = dsd_fast.load(run / "best.safetensors")
    assert pipe.channels == 1 and pipe.config.channels_g == 1
