"""Reading images: the one decoder of the package, and the checks on every user image.

Accepted: file paths (str / Path), PIL images, numpy arrays (H x W, H x W x 3, H x W x 4;
uint8, uint16, or float in [0, 1]) and torch tensors (3 x H x W, or B x 3 x H x W which is
split into B images). Grayscale is replicated to RGB, alpha is dropped; 16-bit images are
scaled by the format's range (65535), not by their content.
Every image becomes a float32 (3, H, W) tensor in [0, 1] at its original size
(`to_chw`); preprocess.py then makes the network's input from it.

Everything that opens an image file (the API, the command line, ground-truth masks, training
data) goes through `open_image`, `upright` and `pil_to_array`, so every reader treats modes
alike and every reader applies the EXIF orientation tag: a phone or dermatoscope JPEG stored
240 x 120 with Orientation = 6 is the 120 x 240 picture every viewer shows, and its mask
and overlay are 120 x 240 too. The tag is applied exactly once: Pillow turns TIFFs upright
itself while loading them (Pillow >= 7; from 11 their size is the upright one even before
loading) and other formats not, so what the decoder does is probed once per format
(`_decoder_turns`) rather than assumed from Pillow's version.

Colour. Pixel values are used as stored, like the upstream projects' loaders and the
training data (ISIC, PH2, HAM10000) read them: an embedded ICC profile of an RGB or grey
image (Adobe RGB, Display P3) and a PNG gAMA chunk are not applied, so a file gives the
model the numbers it was trained on. The one exception is CMYK (print-workflow JPEG/TIFF):
it has no "as stored" RGB, so it is converted to sRGB through its embedded profile with
PIL.ImageCms when there is one (Pillow's profile-less CMYK formula otherwise).

Animated and multi-page files (GIF, APNG, WebP, TIFF): the first frame is the image; a
MultiFrameWarning says so, and the command line records the frame count with the result.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".jp2",
                  ".j2k"}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
INTEGER_MODES = SIXTEEN_BIT_MODES + ("I",)     # scaled by 65535 (PNG stores 16-bit as "I")
STRIP_PIXELS = 1 << 20     # large images are converted in row strips of about this many pixels


class ImageInputError(ValueError):
    """A user-supplied image could not be used; the message says which and why."""


class MultiFrameWarning(UserWarning):
    """An animated or multi-page file: only its first frame is segmented."""


def nfc(name: str) -> str:
    """`name` in Unicode NFC. macOS writes file names decomposed (NFD: "e" + combining
    accent) where other systems and typed names are composed (NFC); names are compared and
    output names made in NFC so that both spellings of "lésion" are one name."""
    return unicodedata.normalize("NFC", name)


# EXIF Orientation (tag 0x0112) -> the transpose that shows the picture upright.
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


# ----------------------------------------------------------------------------- files

# Formats whose decoding runs another program: never tried (Pillow's EPS reader runs
# Ghostscript on whatever PostScript a file holds, whatever the file is named).
_EXTERNAL_DECODERS = {"EPS"}


def _decodable_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in Image.OPEN if f not in _EXTERNAL_DECODERS)


_UNIDENTIFIED = ("unreadable or corrupt image (cannot identify image file: not PNG, JPEG, "
                 "TIFF, BMP, GIF, WebP, JPEG 2000 or another format Pillow reads)")


def _not_an_image(fp) -> str | None:
    """What a file that no reader identified is, where its first bytes say it plainly."""
    try:
        fp.seek(0)
        head = fp.read(132)
    except (OSError, ValueError):
        return None
    if head[128:132] == b"DICM":
        return ("a DICOM file, not an image file: export its pixel data to PNG or TIFF "
                "first (e.g. with pydicom or dcmtk's dcmj2pnm)")
    if head.startswith(b"%!PS") or head.startswith(b"\xc5\xd0\xd3\xc6"):
        return ("a PostScript/EPS file: not read (decoding it would run Ghostscript); "
                "convert it to PNG or TIFF first")
    return None


# A TIFF tile is decoded whole: libtiff allocates it before reading a byte of it. Tiles are
# a few hundred pixels wide in real files; one declared far larger than its image (a 64 x 64
# image "in" 16384 x 16384 tiles costs 0.8 GB to refuse) is refused before decoding.
MAX_TILE_PIXELS = 1 << 24


def _check_tiles(im: Image.Image, path) -> None:
    tags = getattr(im, "tag_v2", None)
    if im.format != "TIFF" or tags is None:
        return
    tw, th = tags.get(322), tags.get(323)                    # TileWidth, TileLength
    if isinstance(tw, int) and isinstance(th, int) and tw * th > MAX_TILE_PIXELS \
            and tw * th > 4 * im.size[0] * im.size[1]:
        raise ImageInputError(f"{path}: declares {tw} x {th}-pixel tiles for a "
                              f"{im.size[0]} x {im.size[1]} image (a corrupt file?); not decoded")


@contextlib.contextmanager
def open_image(path):
    """The PIL image of `path`, not yet decoded (nor turned upright: see `upright`); any
    decoding error inside the block becomes an ImageInputError naming the file. Anything
    but a regular file (a folder, a FIFO, a device) is refused before it is opened: a
    decoder reading a FIFO would wait forever."""
    path = Path(path)
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    if path.is_dir():
        raise ImageInputError(f"{path}: is a folder, expected an image file")
    if not path.is_file():
        raise ImageInputError(f"{path}: not a regular file (a FIFO, socket or device?); "
                              "expected an image file")
    if path.stat().st_size == 0:
        raise ImageInputError(f"{path}: empty file (0 bytes), expected an image")
    # Opened from a file object of ours, not from the path: given a path, Pillow 11-13 may
    # memory-map an uncompressed TIFF and then turn an orientation 6/8 picture wrongly in
    # modes L, I;16, RGBA, P and CMYK (the pixels scrambled, the size the stored one); from
    # a file object every Pillow >= 10 decodes it as it decodes other files.
    try:
        fp = open(path, "rb")
    except OSError as e:
        raise ImageInputError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        try:
            im = Image.open(fp, formats=_decodable_formats())
        except Image.DecompressionBombError as e:
            raise ImageInputError(f"{path}: too large to decode safely ({e})") from None
        except UnidentifiedImageError:
            raise ImageInputError(f"{path}: {_not_an_image(fp) or _UNIDENTIFIED}") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageInputError(f"{path}: unreadable or corrupt image ({e})") from None
        try:
            _check_tiles(im, path)
            yield im
        except ImageInputError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageInputError(f"{path}: unreadable or corrupt image ({e})") from None
        finally:
            im.close()
    finally:
        fp.close()


def orientation(im: Image.Image) -> int:
    """The EXIF orientation of an opened image, 1 (as stored) when absent or invalid. A
    malformed EXIF block is ignored (quietly: PIL's "Corrupt EXIF data" warning is about
    the tag, not the picture); a decoding error is not, since reading a PNG's EXIF decodes
    the image data first (its eXIf chunk may follow them), and swallowing it would leave a
    half-decoded picture that a later load() accepts as whole."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = im.getexif().get(_ORIENTATION_TAG, 1)
        except (OSError, EOFError):          # the image data, not the EXIF block: broken
            raise
        except Exception:  # a malformed EXIF block must not stop the decode: ignore the tag
            return 1
    return value if value in _UPRIGHT else 1


@functools.lru_cache(maxsize=None)
def _decoder_turns(fmt: str | None) -> tuple[bool, bool]:
    """What this Pillow's decoder for format `fmt` does with the orientation tag itself:
    (`size` of an opened, not yet loaded image is already the upright size, the loaded
    pixels are already upright). Probed once per format on a 3 x 2 picture tagged 6:
    TIFF gives (False, True) on Pillow 7-10 and (True, True) from 11; the others (False,
    False). A format that cannot be written with the tag counts as not turning."""
    if not fmt:
        return False, False
    buf = io.BytesIO()
    try:
        probe = Image.new("L", (3, 2))
        if fmt == "TIFF":
            probe.save(buf, fmt, tiffinfo={_ORIENTATION_TAG: 6})
        else:
            exif = Image.Exif()
            exif[_ORIENTATION_TAG] = 6
            probe.save(buf, fmt, exif=exif.tobytes())
        buf.seek(0)
        with warnings.catch_warnings(), Image.open(buf) as im:
            warnings.simplefilter("ignore")
            if im.getexif().get(_ORIENTATION_TAG, 1) != 6:
                return False, False
            before = im.size == (2, 3)
            im.load()
            return before, im.size == (2, 3)
    except Exception:  # no writer for this format, or no EXIF in it: nothing to turn
        return False, False


def pending_orientation(im: Image.Image) -> int:
    """The orientation still to apply to `im`'s decoded pixels: its tag, or 1 where the
    decoder turns the pixels upright itself (TIFF)."""
    return 1 if _decoder_turns(im.format)[1] else orientation(im)


def upright_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of the picture as shown, i.e. after `upright`, of an opened image
    that is not loaded yet."""
    w, h = im.size
    if orientation(im) in (5, 6, 7, 8) and not _decoder_turns(im.format)[0]:
        return h, w
    return w, h


def upright(im: Image.Image, tag: int | None = None) -> Image.Image:
    """The decoded image turned as its EXIF orientation says (`tag`: `pending_orientation`
    read before a reduced decode, whose result no longer knows its format)."""
    tag = pending_orientation(im) if tag is None else tag
    return im.transpose(_UPRIGHT[tag]) if tag in _UPRIGHT else im


def frame_count(im: Image.Image) -> int:
    """Frames (or pages) of an animated or multi-page file, 1 for a still image. An MPO
    (many camera JPEGs) counts as one: its other pictures are previews or depth maps."""
    if im.format == "MPO" or not getattr(im, "is_animated", False):
        return 1
    return int(getattr(im, "n_frames", 1))


def warn_first_frame(im: Image.Image, path) -> int:
    """The frame count of `im`; a MultiFrameWarning naming `path` when it is above 1."""
    n = frame_count(im)
    if n > 1:
        warnings.warn(f"{path}: {n} frames (animated or multi-page); only the first is "
                      "segmented", MultiFrameWarning, stacklevel=3)
    return n


def to_rgb(im: Image.Image) -> Image.Image:
    """`im` as mode RGB: CMYK through its embedded ICC profile to sRGB where it has one
    (see the module docstring), everything else by Pillow's convert."""
    icc = im.info.get("icc_profile")
    if im.mode == "CMYK" and icc:
        from PIL import ImageCms
        try:
            return ImageCms.profileToProfile(im, io.BytesIO(icc), ImageCms.createProfile("sRGB"),
                                             outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass                         # an unusable profile: Pillow's formula, as without
    return im.convert("RGB")


def pil_to_array(im: Image.Image) -> np.ndarray:
    """Decoded PIL image -> (H, W) or (H, W, 3|4) array: uint8, or float32 in [0, 1] for
    16/32-bit integer modes, or float32 as stored for mode "F"."""
    if im.mode in INTEGER_MODES:
        arr = np.asarray(im, dtype=np.int64)
        return (arr.clip(0, 65535) / 65535.0).astype(np.float32)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode == "LA":
        im = im.convert("L")
    elif im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGBA") if "A" in im.getbands() else to_rgb(im)
    return np.asarray(im)


def load_image_file(path) -> np.ndarray:
    """Read an image file to a numpy array (H, W[, C]), upright, its first frame; errors
    name the file."""
    with open_image(path) as im:
        warn_first_frame(im, path)
        tag = pending_orientation(im)
        im.load()
        return pil_to_array(upright(im, tag))


class NonBinaryMaskWarning(UserWarning):
    """A mask file held more than two grey levels (JPEG ringing, anti-aliased edges)."""


MASK_THRESHOLD_8BIT = 128       # > 128 of 255 is lesion, as the ISIC scorer binarises


def load_mask(path) -> torch.Tensor:
    """Mask file -> (H, W) bool, upright. A binary mask (two values, one of them 0: 0/255,
    0/1, ...) is lesion where nonzero. Anything else, typically a JPEG mask whose edges
    rang into grey levels, is binarised at > 128 of 255 (0.5 of the range for 16-bit and
    float masks) with a NonBinaryMaskWarning naming the file: "any nonzero pixel" would
    count the ringing as lesion."""
    arr = np.asarray(load_image_file(path))
    if arr.ndim == 3:
        arr = arr[..., 0]
    values = np.unique(arr)
    if values.size <= 1 or (values.size == 2 and values[0] == 0):
        return torch.from_numpy(arr > 0)
    cut = MASK_THRESHOLD_8BIT if arr.dtype == np.uint8 else MASK_THRESHOLD_8BIT / 255
    import warnings
    warnings.warn(f"{path}: not a binary mask ({values.size} grey levels, e.g. from JPEG "
                  f"compression); binarised at > {MASK_THRESHOLD_8BIT} of 255",
                  NonBinaryMaskWarning, stacklevel=2)
    return torch.from_numpy(arr > cut)


def list_images(folder) -> dict[str, Path]:
    """{stem: path} of the image files directly in `folder`, stems in NFC (`nfc`); two files
    with one stem are an error (masks are matched to images by stem). Hidden files (".x",
    macOS's "._x" AppleDouble companions) are not images."""
    files = {}
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file():
            stem = nfc(p.stem)
            if stem in files:
                raise ValueError(f"two images with stem {stem!r} in {folder}")
            files[stem] = p
    return files


def decode_reduced(im: Image.Image, max_pixels: int) -> Image.Image:
    """A decoded, upright copy of `im` with at most ~max_pixels pixels, never decoding more
    than needed: JPEG draft decodes at 1/2, 1/4 or 1/8 scale directly; other formats are
    decoded and box-averaged by an integer factor (Image.reduce)."""
    tag = pending_orientation(im)
    w, h = im.size
    k = math.sqrt(w * h / max_pixels)
    im.draft(im.mode, (max(1, math.ceil(w / k)), max(1, math.ceil(h / k))))  # JPEG only
    im.load()
    if im.mode in SIXTEEN_BIT_MODES:
        im = im.convert("I")                   # reduce() has no 16-bit mode; values kept
    elif im.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        im = im.convert("RGBA") if "A" in im.getbands() else to_rgb(im)
    factor = math.ceil(math.sqrt(im.size[0] * im.size[1] / max_pixels))
    return upright(im.reduce(factor) if factor > 1 else im, tag)


def strip_rows(height: int, width: int, pixels: int = STRIP_PIXELS):
    """(start, stop) row ranges covering `height` rows, about `pixels` pixels each."""
    step = max(1, pixels // max(1, width))
    for start in range(0, height, step):
        yield start, min(height, start + step)


def decode_rgb8(path, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 upright picture of an image file, the pixels an overlay is drawn on
    (16-bit and float images scaled as the model input is, converted strip by strip). The
    size must still be (height, width): the file may not change while it is segmented."""
    with open_image(path) as im:
        if upright_size(im) != (width, height):
            raise ImageInputError(f"{path}: changed while it was being segmented")
        tag = pending_orientation(im)
        im.load()
        im = upright(im, tag)
        if im.mode in INTEGER_MODES + ("F",):
            arr = pil_to_array(im)                       # float32 in [0, 1]
            if im.mode == "F" and (not np.isfinite(arr).all() or arr.min() < 0
                                   or arr.max() > 1):
                raise ImageInputError(f"{path}: float image values outside [0, 1]")
            out = np.empty((height, width, 3), np.uint8)
            for r0, r1 in strip_rows(height, width):
                out[r0:r1] = (np.clip(arr[r0:r1], 0, 1) * 255 + 0.5).astype(np.uint8)[..., None]
            return out
        if im.mode != "RGB":
            im = to_rgb(im)
        return np.array(im)


# ----------------------------------------------------------------------------- any image

def _describe(item, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"image {index} ({os.fspath(item)})"
    return f"image {index} ({type(item).__name__})"


def array_to_chw(arr: np.ndarray, where: str) -> torch.Tensor:
    """numpy (H,W) / (H,W,1|3|4) -> float32 tensor (3,H,W) in [0,1]."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ImageInputError(
            f"{where}: expected an array of shape (H, W), (H, W, 3) or (H, W, 4), "
            f"got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageInputError(f"{where}: image has zero size {arr.shape[:2]}")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ImageInputError(f"{where}: contains NaN or infinite values")
        if out.min() < 0 or out.max() > 1:
            raise ImageInputError(
                f"{where}: float images must be in [0, 1], got range "
                f"[{out.min():.4g}, {out.max():.4g}]")
    else:
        raise ImageInputError(
            f"{where}: unsupported dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def tensor_to_chw(t: torch.Tensor, where: str) -> torch.Tensor:
    if t.device.type == "meta" or t.is_sparse:
        raise ImageInputError(f"{where}: a {'meta' if t.device.type == 'meta' else 'sparse'} "
                              "tensor holds no pixel values; pass a dense tensor")
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ImageInputError(
            f"{where}: expected a tensor of shape (3, H, W) or (1, H, W), got {tuple(t.shape)}")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ImageInputError(f"{where}: image has zero size {tuple(t.shape[1:])}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.detach().float()
        if not torch.isfinite(t).all():
            raise ImageInputError(f"{where}: contains NaN or infinite values")
        if t.min() < 0 or t.max() > 1:
            raise ImageInputError(
                f"{where}: float tensors must be in [0, 1], got range "
                f"[{t.min().item():.4g}, {t.max().item():.4g}]")
    else:
        raise ImageInputError(f"{where}: unsupported tensor dtype {t.dtype}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.cpu().contiguous()


def as_image_list(images) -> list:
    """Normalise `images` (one image or a sequence) to a list of single images."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        items = [images]
    elif isinstance(images, torch.Tensor):
        items = list(images.unbind(0)) if images.dim() == 4 else [images]
    elif isinstance(images, (list, tuple)):
        items = []
        for item in images:
            if isinstance(item, torch.Tensor) and item.dim() == 4:
                items.extend(item.unbind(0))
            else:
                items.append(item)
    else:
        raise ImageInputError(
            f"images must be a path, PIL image, numpy array, tensor, or a list of them; "
            f"got {type(images).__name__}")
    if not items:
        raise ImageInputError("no images given (empty list)")
    return items


def to_chw(item, index: int = 0) -> torch.Tensor:
    """Any accepted single image -> float32 (3, H, W) in [0, 1] at its original size."""
    where = _describe(item, index)
    if isinstance(item, (str, os.PathLike)):
        return array_to_chw(load_image_file(item), where)
    if isinstance(item, Image.Image):
        return array_to_chw(pil_to_array(item), where)
    if isinstance(item, np.ndarray):
        return array_to_chw(item, where)
    if isinstance(item, torch.Tensor):
        return tensor_to_chw(item, where)
    raise ImageInputError(
        f"{where}: expected a path, PIL image, numpy array or tensor, got {type(item).__name__}")


def to_uint8_rgb(image) -> np.ndarray:
    """(3, H, W) float tensor/array in [0, 1] or (H, W, 3) uint8 -> (H, W, 3) uint8."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[2] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    return arr
