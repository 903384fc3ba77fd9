"""Files as a clinic's or a lab's data bring them (issue "Hardening 2", file-facing items):
EXIF orientation on every format and reader path, corrupt and empty files, animated files,
Unicode names, colour profiles. Every defect case here failed before its fix.

Pictures are made on the fly; CLI runs use the tiniest model and settings.
"""
from __future__ import annotations

import io
import json
import os
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from dsd_fast import ImageInputError, Preprocessing, save_model
from dsd_fast.cli import main
from dsd_fast.cli.discover import discover, prepare
from dsd_fast.images import (decode_reduced, list_images, load_image_file, open_image,
                             to_chw, upright, upright_size)
from dsd_fast.preprocess import to_model_input

FAST = ["--steps", "1", "--ensemble", "1", "--threads", "1", "-q"]
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp"}
# the transpose that stores an upright picture so that EXIF orientation `tag` shows it upright
STORE_FOR = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
             8: Image.Transpose.ROTATE_270}


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    return str(save_model(tiny_model, tmp_path / "tiny.safetensors"))


def _pattern(h=48, w=80):
    """An upright picture whose orientation is plain: a red ramp left to right, a bright
    block in the top-left corner, a dark bottom row band."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    a[..., 1] = 90
    a[: h // 3, : w // 4] = 255
    a[-h // 6:, :, 2] = 200
    return a


def _save_oriented(path: Path, upright_rgb: np.ndarray, tag: int, fmt: str) -> None:
    """Store `upright_rgb` turned so that a viewer honouring Orientation = tag shows it
    upright again (the reference is made in memory, never by a file decoder)."""
    stored = Image.fromarray(upright_rgb).transpose(STORE_FOR[tag])
    exif = Image.Exif()
    exif[0x0112] = tag
    kw = {"JPEG": {"quality": 98, "subsampling": 0}, "WEBP": {"lossless": True}}.get(fmt, {})
    if fmt == "TIFF":
        kw["tiffinfo"] = {0x0112: tag}
    else:
        kw["exif"] = exif.tobytes()
    stored.save(path, fmt, **kw)


def _close(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(float) - b.astype(float)).mean()) < tol


# ----------------------------------------------------------------------------- defect 1

@pytest.mark.parametrize("tag", sorted(STORE_FOR))
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_orientation_is_applied_once_on_every_reader_path(tmp_path, fmt, tag):
    """The API's decode, the command line's size and full decode, and its reduced decode all
    give the upright picture, once turned (TIFF: Pillow may turn it on load itself)."""
    want = _pattern()
    path = tmp_path / f"o{tag}{FORMATS[fmt]}"
    _save_oriented(path, want, tag, fmt)
    tol = 4.0 if fmt == "JPEG" else 0.01
    assert _close(load_image_file(path)[..., :3], want, tol)                 # the API
    with open_image(path) as im:                                             # CLI: full decode
        assert upright_size(im) == (want.shape[1], want.shape[0])
        im.load()
        assert _close(np.asarray(upright(im).convert("RGB")), want, tol)
    with open_image(path) as im:                                             # CLI: reduced
        small = decode_reduced(im, want.size // 3 // 4)
        assert small.size[0] < small.size[1] * 2 and small.size[0] > small.size[1]  # landscape
        ref = np.asarray(Image.fromarray(want).resize(small.size, Image.BOX))
        assert _close(np.asarray(small.convert("RGB")), ref, 12.0)


@pytest.mark.parametrize("tag", sorted(STORE_FOR))
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_command_line_reader_gives_the_api_model_input(tmp_path, fmt, tag):
    """prepare() (the command line's decode) below --max-pixels makes exactly the API's model
    input; above it, the reduced decode has the same size, orientation and near values."""
    want = _pattern()
    path = tmp_path / f"o{tag}{FORMATS[fmt]}"
    _save_oriented(path, want, tag, fmt)
    pre = Preprocessing(image_size=16)
    api = to_model_input([to_chw(path)], pre)[0]
    item = discover([str(path)]).images[0]
    full = prepare(item, pre, max_pixels=10**7)
    assert (full.height, full.width) == want.shape[:2] and full.downscaled is None
    assert np.array_equal(full.model_chw.numpy(), api.numpy())
    reduced = prepare(item, pre, max_pixels=want.size // 3 // 4)
    assert (reduced.height, reduced.width) == want.shape[:2]
    assert reduced.downscaled is not None and reduced.downscaled[1] > reduced.downscaled[0]
    assert float((reduced.model_chw - api).abs().mean()) < 0.06


@pytest.mark.parametrize("tag", (3, 6))
def test_rotated_tiff_segmented_upright_by_the_command_line(tmp_path, ckpt, tag):
    """A TIFF with orientation 6 crashed the run (broadcast error), with orientation 3 above
    --max-pixels its model input was upside down. Now a rotated TIFF gives the maps of the
    same picture stored upright (same name, so the same noise), full and reduced decode."""
    rotated, plain = tmp_path / "rotated", tmp_path / "plain"
    rotated.mkdir(), plain.mkdir()
    want = _pattern(60, 100)
    _save_oriented(rotated / "scan.tif", want, tag, "TIFF")
    Image.fromarray(want).save(plain / "scan.png")
    for extra in ([], ["--max-pixels", "1500"]):
        outs = []
        for src in (rotated, plain):
            out = tmp_path / f"out_{src.name}{len(extra)}"
            assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt,
                         *extra, *FAST]) == 0
            rec = json.loads((out / "results.json").read_text())["images"][0]
            assert (rec["width"], rec["height"]) == (100, 60)
            assert rec["model_input"].startswith("down") == bool(extra)
            outs.append(out)
        for kind in ("prob", "mask", "overlay"):
            a, b = (np.asarray(Image.open(o / f"scan_{kind}.png")) for o in outs)
            assert a.shape[:2] == (60, 100) and np.array_equal(a, b), (kind, extra)


# ----------------------------------------------------------------------------- defect 2

def _corrupt_png(path: Path) -> None:
    """A PNG with one byte of its compressed image data flipped (the CRC still says so)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IDAT") + 4 + 40
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_png_is_refused_by_the_command_line_like_the_api(tmp_path, ckpt):
    bad = tmp_path / "in" / "bad.png"
    bad.parent.mkdir()
    _corrupt_png(bad)
    with pytest.raises(ImageInputError, match="broken data stream|corrupt"):
        load_image_file(bad)
    item = discover([str(bad)]).images[0]
    with pytest.raises(ImageInputError, match="broken data stream|corrupt"):
        prepare(item, Preprocessing(image_size=16), max_pixels=10**7)
    out = tmp_path / "out"
    assert main(["segment", str(bad), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 1
    doc = json.loads((out / "results.json").read_text())
    assert doc["images"] == [] and "bad.png" in doc["failed"][0]["input"]
    assert not (out / "bad_mask.png").exists()


def test_malformed_exif_is_ignored_quietly(tmp_path):
    """A broken EXIF block is not the picture: decoded as stored, no PIL warning shown."""
    path = tmp_path / "a.png"
    Image.fromarray(_pattern()).save(path, exif=b"MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image_file(path).shape == (48, 80, 3)
