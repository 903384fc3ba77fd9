"""Files as a clinic's or a lab's data bring them (issue "Hardening 2", file-facing items):
EXIF orientation on every format and reader path, corrupt and empty files, animated files,
Unicode names, colour profiles. Every defect case here failed before its fix.

Pictures are made on the fly; CLI runs use the tiniest model and settings.
"""
from __future__ import annotations

import io
import json
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from dsd_fast import ImageInputError, load, save_model
from dsd_fast.cli import main
from dsd_fast.cli.discover import discover, prepare
from dsd_fast.images import (decode_reduced, list_images, load_image_file, open_image,
                             pil_to_array, to_chw, upright, upright_size)

FAST = ["--steps", "1", "--ensemble", "1", "--threads", "1", "-q"]
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "TIFF-LZW": ".tiff", "WEBP": ".webp"}
# the transpose that stores an upright picture so that EXIF orientation `tag` shows it upright
STORE_FOR = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
             8: Image.Transpose.ROTATE_270}


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    return str(save_model(tiny_model, tmp_path / "tiny.safetensors"))


@pytest.fixture
def segmenter(ckpt):
    """What prepare() decodes for: the tiny model's segmenter (its `view` of a picture is
    the API's model input)."""
    return load(ckpt)


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
    kw = {"JPEG": {"quality": 98, "subsampling": 0}, "WEBP": {"lossless": True},
          "TIFF-LZW": {"compression": "tiff_lzw"}}.get(fmt, {})     # LZW: libtiff's decoder
    if fmt.startswith("TIFF"):
        kw["tiffinfo"] = {0x0112: tag}
    else:
        kw["exif"] = exif.tobytes()
    stored.save(path, fmt.split("-")[0], **kw)


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
def test_command_line_reader_gives_the_api_model_input(tmp_path, segmenter, fmt, tag):
    """prepare() (the command line's decode) below --max-pixels makes exactly the API's model
    input; above it, the reduced decode has the same size, orientation and near values."""
    want = _pattern()
    path = tmp_path / f"o{tag}{FORMATS[fmt]}"
    _save_oriented(path, want, tag, fmt)
    api = segmenter.view(to_chw(path))
    item = discover([str(path)]).images[0]
    full = prepare(item, segmenter, max_pixels=10**7)
    assert (full.height, full.width) == want.shape[:2] and full.downscaled is None
    assert np.array_equal(full.model_chw.numpy(), api.numpy())
    reduced = prepare(item, segmenter, max_pixels=want.size // 3 // 4)
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


def test_corrupt_png_is_refused_by_the_command_line_like_the_api(tmp_path, ckpt, segmenter):
    bad = tmp_path / "in" / "bad.png"
    bad.parent.mkdir()
    _corrupt_png(bad)
    with pytest.raises(ImageInputError, match="broken data stream|corrupt"):
        load_image_file(bad)
    item = discover([str(bad)]).images[0]
    with pytest.raises(ImageInputError, match="broken data stream|corrupt"):
        prepare(item, segmenter, max_pixels=10**7)
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


# ----------------------------------------------------------------------------- weak spots

def test_empty_file_says_empty(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageInputError, match=r"e\.png: empty file \(0 bytes\)"):
        load_image_file(tmp_path / "e.png")


def _animated(path: Path, n: int = 3) -> None:
    frames = [Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


@pytest.mark.parametrize("suffix", (".gif", ".webp", ".png", ".tif"))
def test_animated_file_uses_the_first_frame_and_says_so(tmp_path, suffix):
    path = tmp_path / f"anim{suffix}"
    _animated(path)
    with pytest.warns(UserWarning, match=r"3 frames .*only the first"):
        arr = load_image_file(path)
    assert arr.max() == 0                                      # frame 0 is the black one


def test_gif_and_webp_in_a_folder_are_found_and_frames_recorded(tmp_path, ckpt, capsys):
    """They were skipped silently in folders ("of 5 inputs" for 7 files) though they worked
    when named; the frame count of an animated one goes into its record."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i, suffix in enumerate((".png", ".jpg", ".bmp", ".tif", ".tiff", ".gif", ".webp")):
        Image.fromarray(_pattern(20, 30)).save(src / f"im{i}{suffix}")
    _animated(src / "anim.gif")
    (src / "notes.txt").write_text("not an image")
    assert {im.path.name for im in discover([str(src)]).images} == \
        {f"im{i}{s}" for i, s in enumerate((".png", ".jpg", ".bmp", ".tif", ".tiff", ".gif",
                                            ".webp"))} | {"anim.gif"}
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    err = capsys.readouterr().err
    assert "anim.gif: 3 frames" in err and "only the first" in err
    recs = {r["key"]: r for r in json.loads((out / "results.json").read_text())["images"]}
    assert len(recs) == 8 and recs["anim"]["frames"] == 3 and "frames" not in recs["im0"]


def test_nfd_image_name_matches_nfc_ground_truth(tmp_path, ckpt):
    """macOS writes decomposed names (NFD); a ground-truth folder written elsewhere has them
    composed (NFC): the image is matched and its outputs get the NFC name."""
    nfd, nfc_name = unicodedata.normalize("NFD", "lésion_ü"), "lésion_ü"
    assert nfd != nfc_name
    src, gt, out = tmp_path / "in", tmp_path / "gt", tmp_path / "out"
    src.mkdir(), gt.mkdir()
    Image.fromarray(_pattern(20, 30)).save(src / f"{nfd}.png")
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:20] = 255
    Image.fromarray(mask).save(gt / f"{nfc_name}.png")
    assert list(list_images(src)) == [nfc_name]
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, "--gt", str(gt),
                 *FAST]) == 0
    rec = json.loads((out / "results.json").read_text())["images"][0]
    assert rec["key"] == nfc_name and rec["metrics"] is not None
    assert (out / f"{nfc_name}_mask.png").exists()


def _cmyk_profile() -> bytes:
    """A minimal ICC v2 CMYK output profile (Lab PCS, 2-point lut8 A2B0 / B2A0 tables) with
    colours unlike Pillow's profile-less CMYK formula, made here so no profile file is
    needed."""
    import struct

    def s15(x):
        return struct.pack(">i", round(x * 65536))

    def lut8(n_in, n_out, corner):
        body = b"mft1" + bytes(4) + bytes([n_in, n_out, 2, 0])
        body += b"".join(s15(1.0 if i == j else 0.0) for i in range(3) for j in range(3))
        body += bytes(range(256)) * n_in
        for idx in range(2 ** n_in):             # first input channel varies slowest
            bits = [(idx >> (n_in - 1 - c)) & 1 for c in range(n_in)]
            body += bytes(corner(bits))
        return body + bytes(range(256)) * n_out

    def cmyk_to_lab(b):                          # a warm, dark-biased ink set, Lab encoded
        c, m, y, k = b
        L = 100 * (1 - k) * (1 - 0.22 * c - 0.3 * m - 0.08 * y)
        a = 128 + 55 * m - 30 * c - 5 * y
        bb = 128 + 60 * y - 40 * c + 10 * m
        return [round(L * 255 / 100), max(0, min(255, round(a))), max(0, min(255, round(bb)))]

    def lab_to_cmyk(b):
        L, a, bb = b
        return [0, 0, 0, 255 if L == 0 else 0]

    wtpt = b"XYZ " + bytes(4) + s15(0.9642) + s15(1.0) + s15(0.8249)
    text = b"dsd-fast test CMYK\x00"
    desc = (b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4) + bytes(4)
            + bytes(2) + bytes(1) + bytes(67))
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"A2B0", lut8(4, 3, cmyk_to_lab)),
            (b"B2A0", lut8(3, 4, lab_to_cmyk))]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"prtr" + b"CMYK"
              + b"Lab " + bytes(12) + b"acsp" + bytes(4 + 4 + 4 + 4 + 8 + 4)
              + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(4))
    header += bytes(128 - len(header))
    return header + table + data


def test_cmyk_jpeg_is_converted_through_its_icc_profile(tmp_path, segmenter):
    """Decision (images.py docstring): CMYK goes through its embedded profile to sRGB."""
    rng = np.random.default_rng(1)
    cmyk = Image.fromarray(rng.integers(0, 255, (24, 32, 4), dtype=np.uint8), "CMYK")
    icc = _cmyk_profile()
    path = tmp_path / "print.jpg"
    cmyk.save(path, quality=100, icc_profile=icc)
    with Image.open(path) as im:
        im.load()
        want = np.asarray(ImageCms.profileToProfile(
            im, io.BytesIO(icc), ImageCms.createProfile("sRGB"), outputMode="RGB"))
        naive = np.asarray(im.convert("RGB"))
    assert np.abs(want.astype(int) - naive).mean() > 10        # the profile matters here
    assert np.array_equal(load_image_file(path), want)
    item = discover([str(path)]).images[0]                      # the command line's reader
    assert np.array_equal(prepare(item, segmenter, 10**7).model_chw.numpy(),
                          segmenter.view(to_chw(path)).numpy())


def test_png_gamma_and_rgb_profiles_keep_the_stored_values(tmp_path):
    """Decision (images.py docstring): as the training data were read, RGB values are used as
    stored; a gAMA chunk or an RGB ICC profile does not change them."""
    import struct

    from PIL import PngImagePlugin
    arr = _pattern()
    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", struct.pack(">I", 45455))                # gamma 1 / 2.2
    Image.fromarray(arr).save(tmp_path / "g.png", pnginfo=info)
    with Image.open(tmp_path / "g.png") as im:
        assert abs(im.info["gamma"] - 0.45455) < 1e-4           # the chunk is there
    assert np.array_equal(load_image_file(tmp_path / "g.png"), arr)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(arr).save(tmp_path / "p.png", icc_profile=srgb)
    assert np.array_equal(load_image_file(tmp_path / "p.png"), arr)


def test_nfd_ground_truth_in_a_mirrored_subfolder_is_found(tmp_path, ckpt):
    """--gt with -r looks in GT/<subfolder>/ first: a ground truth whose name is spelled in
    NFD there (copied from a Mac) is found for the NFC-named image."""
    src, gt, out = tmp_path / "in", tmp_path / "gt", tmp_path / "out"
    (src / "visit1").mkdir(parents=True), (gt / "visit1").mkdir(parents=True)
    Image.fromarray(_pattern(20, 30)).save(src / "visit1" / "lésion.png")
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:20] = 255
    Image.fromarray(mask).save(gt / "visit1" / f"{unicodedata.normalize('NFD', 'lésion')}.png")
    assert main(["segment", str(src), "-r", "-o", str(out), "--checkpoint", ckpt, "--gt",
                 str(gt), *FAST]) == 0
    rec = json.loads((out / "results.json").read_text())["images"][0]
    assert rec["key"] == "visit1/lésion" and rec["metrics"] is not None


@pytest.mark.parametrize("tag", (6, 8))
@pytest.mark.parametrize("mode", ("L", "I;16", "RGBA", "P", "CMYK"))
def test_uncompressed_tiff_of_any_mode_turned_once(tmp_path, segmenter, mode, tag):
    """Found by probing: opened by its path, Pillow 11-13 memory-maps an uncompressed TIFF
    and scrambles an orientation 6/8 picture in these modes (a 16-bit ultrasound TIFF
    failed with 'could not broadcast (40,60,1) into (60,40,3)'). Every reader now gives
    the upright picture."""
    if mode == "I;16":
        up = Image.fromarray((np.arange(48 * 80, dtype=np.uint16).reshape(48, 80) * 17))
    else:
        up = Image.fromarray(_pattern()).convert(mode)
    path = tmp_path / f"{mode.replace(';', '')}_{tag}.tif"
    up.transpose(STORE_FOR[tag]).save(path, tiffinfo={0x0112: tag})
    want = pil_to_array(up)                                  # the upright picture itself
    assert want.shape[:2] == (48, 80)
    assert np.array_equal(load_image_file(path), want)
    item = discover([str(path)]).images[0]
    prep = prepare(item, segmenter, max_pixels=10**7)
    assert (prep.height, prep.width) == (48, 80)
    assert np.array_equal(prep.model_chw.numpy(), segmenter.view(to_chw(path)).numpy())


# ----------------------------------------------------------------------------- probes

def test_postscript_is_never_decoded_whatever_its_name(tmp_path, monkeypatch):
    """Pillow's EPS reader runs Ghostscript on the file's PostScript: a .png that holds
    PostScript is refused by name, and no EPS decoder is ever asked to load it."""
    from PIL import EpsImagePlugin

    def decoded(self, *a, **k):
        raise AssertionError("an EPS file was decoded (Ghostscript would run)")
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", decoded)
    path = tmp_path / "scan.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
                     b"0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")
    with pytest.raises(ImageInputError, match="PostScript/EPS file: not read"):
        load_image_file(path)


def test_dicom_file_is_named_as_such(tmp_path):
    path = tmp_path / "study.dcm"
    path.write_bytes(bytes(128) + b"DICM" + bytes(range(256)) * 4)
    with pytest.raises(ImageInputError, match="a DICOM file, not an image file: export"):
        load_image_file(path)


def test_jpeg2000_in_a_folder_is_found(tmp_path):
    from PIL import features
    if not features.check("jpg_2000"):
        pytest.skip("this Pillow has no JPEG 2000 codec")
    Image.fromarray(_pattern()).save(tmp_path / "x.jp2")
    assert [im.path.name for im in discover([str(tmp_path)]).images] == ["x.jp2"]
    assert load_image_file(tmp_path / "x.jp2").shape == (48, 80, 3)


def test_mac_and_windows_companion_files_are_not_masks(tmp_path, capsys):
    """A folder copied from a Mac or Windows brings ._<name>.png (AppleDouble), .DS_Store
    and Thumbs.db: `dsd-fast eval` took ._a_mask.png for a prediction without ground truth
    and stopped; they are not images."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(pred / "a_mask.png")
    Image.fromarray(m).save(gt / "a.png")
    for folder in (pred, gt):
        (folder / "._a_mask.png").write_bytes(b"\x00\x05\x16\x07" + bytes(200))
        (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07" + bytes(200))
        (folder / ".DS_Store").write_bytes(bytes(64))
        (folder / "Thumbs.db").write_bytes(bytes(64))
    assert list(list_images(pred)) == ["a_mask"] and list(list_images(gt)) == ["a"]
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path)]) == 0
    assert "1 images" in capsys.readouterr().out


def _tiff_with_tiles(path: Path, size: int, tile: int) -> None:
    """A `size` x `size` RGB TIFF declaring one deflate tile of `tile` x `tile` pixels."""
    import struct
    import zlib
    data = zlib.compress(bytes(min(tile, 4096) * 3 * 16))
    entries = [(256, 3, size), (257, 3, size), (258, 3, None), (259, 3, 8), (262, 3, 2),
               (277, 3, 3), (284, 3, 1), (322, 4, tile), (323, 4, tile), (324, 4, None),
               (325, 4, len(data))]
    after = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, val in entries:
        count = 3 if tag == 258 else 1
        val = after if tag == 258 else (after + 6 if tag == 324 else val)
        out += struct.pack("<HHI", tag, typ, count)
        out += struct.pack("<HH", val, 0) if typ == 3 and count == 1 else struct.pack("<I", val)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 8, 8, 8) + data
    path.write_bytes(bytes(out))


def test_tiff_declaring_huge_tiles_is_refused_before_decoding(tmp_path):
    """Found by probing: a 64 x 64 TIFF declaring 16384 x 16384 tiles made libtiff allocate
    0.8 GB before failing with 'decoder error -2' (and a raw libtiff line on stderr)."""
    _tiff_with_tiles(tmp_path / "t.tif", 64, 16384)
    with pytest.raises(ImageInputError, match="declares 16384 x 16384-pixel tiles for a 64 x 64"):
        load_image_file(tmp_path / "t.tif")
    _tiff_with_tiles(tmp_path / "small_image_usual_tiles.tif", 64, 256)   # tile > image: fine
    with open_image(tmp_path / "small_image_usual_tiles.tif") as im:
        assert im.size == (64, 64)
