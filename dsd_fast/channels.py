"""Images with any channel count: what a model takes (its family reads it from its config,
i.e. from the first convolution's width) and what a user gives.

    read_channels(item)            any accepted image -> (C, H, W) float32 in [0, 1], C as given
    match_channels(chw, want)      -> (want, H, W), converting only what has one meaning

Conversions (each is announced once per call by the segmenter, a ChannelNote):
    1 -> 3   a grayscale image for an RGB model: replicated;
    3 -> 1   an RGB image for a one-channel (ultrasound) model: ITU-R BT.601 luma,
             Y = 0.299 R + 0.587 G + 0.114 B;
    4 -> 3 or 1   RGBA / LA as files give them: the alpha is dropped first.
Anything else (a 4-channel MRI stack for a 3-channel model, 3 channels for a 4-channel one)
has no meaning to convert to and is an ImageInputError naming both counts. A stack of
channels (channel files, TIFF pages, .npy channels) is no colour picture: its 3 channels
are not turned into luma, nor its 2nd / 4th taken for an alpha; only a one-channel stack (an
(H, W) .npy) is replicated for an RGB model, as any grey image is.

What `read_channels` accepts beyond the RGB reader of images.py: numpy arrays (H, W, N)
with any N, tensors (N, H, W), `.npy` files (H, W[, N]), multi-page TIFFs whose pages are
the channels (one grayscale page each), and channel folders: one file per channel,

    case7/case7_c0.png, case7/case7_c1.png, ... case7/case7_c{N-1}.png

a folder whose files (two or more; PNG, TIFF, ... or .npy) are all named <prefix>_c<k> (or
c<k>) with one prefix, k = 0 .. N-1 each once, each a single-channel image (told from its
header: the PIL mode, the .npy shape; `is_channel_folder`), of one size: the way a modality
per file is kept, as BraTS keeps its volumes. Other folders are folders of images.

For a model (`model_image`), a multi-page TIFF is its channels when it has as many
grayscale pages as the model has channels (a 3-page TIFF for an RGB model equals the 3-file
channel folder), else its first page with the multi-frame warning, as any multi-page
picture. Value ranges as images.py: uint8 / 255, uint16 / 65535, floats in [0, 1] (finite).
RGB models keep images.py's reader exactly for pictures (EXIF orientation, CMYK through
ICC), so their inputs, noise keys and masks are unchanged.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import (IMAGE_SUFFIXES, INTEGER_MODES, ImageInputError, _describe, open_image,
                     pil_to_array, to_chw, upright, warn_first_frame)

LUMA_601 = (0.299, 0.587, 0.114)
ARRAY_SUFFIX = ".npy"
# a channel file's stem: "<prefix>_c<k>" or "c<k>" (case-insensitive c)
_CHANNEL_STEM = re.compile(r"^(?:(?P<prefix>.+)_)?[cC](?P<k>[0-9]+)$")
# PIL modes images.pil_to_array decodes to one channel (a palette or bilevel "1" picture
# becomes RGB there, so it is no channel file)
ONE_CHANNEL_MODES = frozenset(INTEGER_MODES) | {"F", "L", "LA"}
# the first bytes of a TIFF (little / big endian; BigTIFF)
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


class ChannelNote(UserWarning):
    """Images were converted to the model's channel count (grayscale replicated, RGB to
    luma, alpha dropped)."""


def read_channels(item, index: int = 0) -> tuple[torch.Tensor, bool]:
    """Any accepted single image -> (float32 (C, H, W) in [0, 1] with the channels it has,
    whether its last channel is an alpha). Files, PIL images and (H, W, 2|4) arrays carry
    alpha as images do (LA, RGBA); a (C, H, W) tensor's channels are all data. A multi-page
    TIFF gives all its pages."""
    chw, alpha, _, _ = _read_item(item, index, None)
    return chw, alpha


def _read_item(item, index: int, channels: int | None) -> tuple[torch.Tensor, bool, bool, str]:
    """-> ((C, H, W), alpha, stacked, hint): `stacked` when the channels are a stack (a
    channel folder, TIFF pages, a .npy) rather than one picture's bands; `hint` a clause
    saying how the item's layout was read, for a channel-count error. `channels`: the
    model's count, which decides whether a multi-page TIFF is its channels (None: it is)."""
    where = _describe(item, index)
    if isinstance(item, (str, os.PathLike)):
        chw, stacked, hint = _read_path(Path(item), where, channels)
        return chw, chw.shape[0] in (2, 4) and not stacked, stacked, hint
    if isinstance(item, Image.Image):
        chw = _from_pil(item, where)
        return chw, chw.shape[0] in (2, 4), False, ""
    if isinstance(item, np.ndarray):
        chw = _from_array(item, where, channels_last=True)
        return chw, chw.shape[0] in (2, 4), False, _hw_n_hint("an array", item.shape)
    if isinstance(item, torch.Tensor):
        if item.dim() == 2:
            item = item[None]
        if item.dim() != 3:
            raise ImageInputError(f"{where}: expected a tensor of shape (C, H, W), got "
                                  f"{tuple(item.shape)}")
        return _from_array(item.detach().cpu().numpy(), where, channels_last=False), False, \
            False, ""
    return to_chw(item, index), False, False, ""     # images.py names what is accepted


def match_channels(chw: torch.Tensor, want: int, where: str = "image", alpha: bool = False,
                   stacked: bool = False, hint: str = "") -> tuple:
    """(C, H, W) -> ((want, H, W), what was converted or None). `alpha`: the last channel
    is an alpha (LA, RGBA), dropped when the model does not take it. `stacked`: the
    channels are a stack (channel files, TIFF pages, .npy channels), not a picture's colours:
    only a single channel is converted (replicated, as grey). `hint`: a clause added to the
    error (how the input's layout was read)."""
    have = chw.shape[0]
    if have == want:
        return chw, None
    if alpha and want in (1, 3):                    # LA / RGBA: the alpha goes first
        chw, have = chw[:-1], have - 1
        if have == want:
            return chw, "alpha dropped"
    if have == 1 and want == 3:
        return chw.expand(3, -1, -1).contiguous(), "grayscale replicated to RGB"
    if have == 3 and want == 1 and not stacked:
        y = sum(w * chw[c] for c, w in enumerate(LUMA_601))
        return y[None].clamp(0, 1), "RGB converted to luma (ITU-R BT.601)"
    n = chw.shape[0]
    # said where a picture of n bands would have been converted (luma, alpha dropped)
    as_picture = (n == 3 and want == 1) or (n in (2, 4) and want in (1, 3))
    stack = (": a stack of channels (channel files, TIFF pages or .npy channels), not "
             "colours, so they are not converted" if stacked and as_picture else "")
    give = want not in (1, 3) or stack
    raise ImageInputError(
        f"{where}: the model takes {want}-channel images, this one has {n} "
        f"channel{'s' if n != 1 else ''}{stack}" + (f" ({hint})" if hint else "")
        + (f"; give {_what_to_give(want)}" if give else ""))


def _what_to_give(want: int) -> str:
    if want == 1:
        return "grayscale images, (H, W) arrays or .npy files, or one-channel tensors"
    return (f"({want}, H, W) tensors, (H, W, {want}) arrays or .npy files, {want}-page TIFFs "
            f"or folders of {want} channel files")


def model_image(item, index: int, channels: int) -> tuple[torch.Tensor, str | None]:
    """One user image for a model taking `channels`: an RGB model reads a picture as
    images.py always has; a stack (channel folder, .npy, a TIFF of `channels` grayscale
    pages) and any input of another model with its own channels, then matched.
    -> ((channels, H, W), conversion)."""
    if channels == 3 and not reads_as_channels(item, channels):
        return to_chw(item, index), None
    chw, alpha, stacked, hint = _read_item(item, index, channels)
    return match_channels(chw, channels, _describe(item, index), alpha, stacked, hint)


def to_model_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, 3, H, W) RGB batches (training data) -> (B, channels, H, W); 1: luma."""
    if channels == images.shape[1]:
        return images
    return torch.stack([match_channels(im, channels)[0] for im in images])


def reads_as_channels(item, channels: int | None = None) -> bool:
    """A path only this module reads, for any model: a .npy file, a folder (a channel
    folder) and, given the model's `channels`, a TIFF that is its channels (as many
    grayscale pages as the model's channels)."""
    if not isinstance(item, (str, os.PathLike)):
        return False
    path = Path(item)
    if _is_npy(path) or path.is_dir():
        return True
    return channels is not None and _is_tiff_stack(path, channels)


def channel_picture(chw: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8 to draw an overlay on, for inputs that are no
    picture file (.npy, channel folders, TIFF pages): 3 channels as RGB, else the first
    channel as grey."""
    rgb = chw if chw.shape[0] == 3 else chw[:1].expand(3, -1, -1)
    return (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy().copy()


# ----------------------------------------------------------------------------- headers
def npy_shape(path) -> tuple[int, ...] | None:
    """The shape a .npy file declares, read from its header only (no data read); None when
    it is no readable .npy of plain numbers (bad magic or header, a structured or object
    dtype: nothing an image is)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:                                   # 3.0 is for unicode field names only
                return None
    except (OSError, ValueError, SyntaxError, EOFError):
        return None
    if dtype.fields is not None or dtype.kind not in "biuf":
        return None
    return tuple(int(d) for d in shape)


def _is_single_channel_file(path: Path) -> bool:
    """Whether a file reads as one channel, from its header: a .npy of shape (H, W) or
    (H, W, 1); an image of a one-channel mode, one page. Unreadable: False."""
    if path.suffix.lower() == ARRAY_SUFFIX:
        shape = npy_shape(path)
        return shape is not None and (len(shape) == 2 or len(shape) == 3 and shape[2] == 1)
    try:
        with open_image(path) as im:                # the header: mode and page count
            return im.mode in ONE_CHANNEL_MODES and not _tiff_pages(im) > 1
    except ImageInputError:
        return False


def _tiff_pages(im: Image.Image) -> int:
    """Pages of an opened TIFF (IFDs walked, nothing decoded); 0 for other formats."""
    return int(getattr(im, "n_frames", 1)) if (im.format or "").upper() == "TIFF" else 0


def _is_tiff_stack(path: Path, channels: int) -> bool:
    """A TIFF file of `channels` pages, the first grayscale (a channel stack for a model of
    `channels`); read from its header. Only a regular file is opened: a FIFO or device
    would block here, before the reader that refuses it with a clear message."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            if f.read(4) not in _TIFF_MAGIC:
                return False
        with open_image(path) as im:
            return _tiff_pages(im) == channels > 1 and im.mode in ONE_CHANNEL_MODES
    except (OSError, ImageInputError):
        return False


def _hw_n_hint(what: str, shape: tuple) -> str:
    return f"{what} is read as (H, W, N), this one's shape is {tuple(shape)}"


# ----------------------------------------------------------------------------- readers
def _is_npy(item) -> bool:
    return isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() == ARRAY_SUFFIX


def _channel_names(folder: Path) -> list[tuple[str, int, Path]] | None:
    """[(prefix, k, file)] of a folder's files when every (non-hidden) entry is an image or
    .npy file named as a channel file; None otherwise."""
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError:
        return None
    out = []
    for p in entries:
        suffix = p.suffix.lower()
        m = _CHANNEL_STEM.match(p.stem)
        if m is None or not (suffix in IMAGE_SUFFIXES or suffix == ARRAY_SUFFIX) \
                or not p.is_file():
            return None
        out.append((m.group("prefix") or "", int(m.group("k")), p))
    return out


def is_channel_folder(path) -> bool:
    """A folder of one file per channel (module docstring): two or more files, all named
    <prefix>_c<k> with one prefix, numbered c0 .. c{N-1} each once, each single-channel by
    its header (no pixels decoded). Anything else is a folder of images: RGB photos named
    IMG_c0.png, IMG_c1.png are two pictures."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = _channel_names(path)
    if names is None or len(names) < 2 or len({n[0] for n in names}) != 1:
        return False
    if sorted(n[1] for n in names) != list(range(len(names))):
        return False
    return all(_is_single_channel_file(p) for _, _, p in names)


def channel_files(folder: Path, where: str = "") -> list[Path]:
    """A channel folder's files in channel order; ImageInputError naming what is wrong
    (not such a folder, a channel missing or given twice)."""
    where = where or str(folder)
    names = _channel_names(folder)
    if names is None or len(names) < 2 or len({n[0] for n in names}) != 1:
        raise ImageInputError(
            f"{where}: a folder is read as one image only when it holds one file per "
            "channel, all named <prefix>_c0, <prefix>_c1, ... (e.g. case7_c0.png)")
    ks = sorted(n[1] for n in names)
    if ks != list(range(len(ks))):
        raise ImageInputError(f"{where}: channel files must be numbered c0 .. c{len(ks) - 1}"
                              f", each once; found c{', c'.join(map(str, ks))}")
    return [p for _, _, p in sorted(names, key=lambda n: n[1])]


def _read_folder(folder: Path, where: str) -> torch.Tensor:
    planes = []
    for p in channel_files(folder, where):
        plane, _, _ = _read_path(p, f"{where} channel file {p.name}")
        if plane.shape[0] != 1:
            raise ImageInputError(f"{where}: channel file {p.name} has {plane.shape[0]} "
                                  "channels; each file of a channel folder is one grayscale "
                                  "channel")
        if planes and plane.shape != planes[0].shape:
            raise ImageInputError(f"{where}: channel file {p.name} is "
                                  f"{tuple(plane.shape[1:])}, channel 0 "
                                  f"{tuple(planes[0].shape[1:])} (H, W)")
        planes.append(plane)
    return torch.cat(planes)


def _read_path(path: Path, where: str,
               channels: int | None = None) -> tuple[torch.Tensor, bool, str]:
    """-> ((C, H, W), whether its channels are a stack (.npy, TIFF pages, a channel folder)
    rather than one picture's bands, whose 2nd / 4th may be an alpha, a hint on how its
    layout was read). A multi-page TIFF is its pages when `channels` is None or its page
    count (module docstring), else its first page with the multi-frame warning."""
    if not path.exists():
        raise ImageInputError(f"{where}: no such file")
    if path.is_dir():
        return _read_folder(path, where), True, ""
    if path.suffix.lower() == ARRAY_SUFFIX:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ImageInputError(f"{where}: not a readable .npy array ({e})") from None
        return _from_array(arr, where, channels_last=True), True, \
            _hw_n_hint("a .npy file", arr.shape)
    with open_image(path) as im:
        pages = _tiff_pages(im)
        if pages > 1 and (channels is None or pages == channels
                          and im.mode in ONE_CHANNEL_MODES):
            return _read_pages(im, pages, where), True, ""
        hint = ""
        if pages > 1:
            hint = (f"page 1 of a {pages}-page TIFF, whose pages are channels only when they "
                    f"are {channels} grayscale pages")
        warn_first_frame(im, path)
        im.load()
        return _from_pil(upright(im), where), False, hint


def _read_pages(im: Image.Image, pages: int, where: str) -> torch.Tensor:
    """A multi-page TIFF's pages -> (pages, H, W), one grayscale channel a page."""
    planes = []
    for k in range(pages):
        im.seek(k)
        page = _from_pil(im.copy(), f"{where} page {k + 1}")
        if page.shape[0] != 1:
            raise ImageInputError(f"{where}: page {k + 1} has {page.shape[0]} "
                                  "channels; a channel stack has grayscale pages")
        if planes and page.shape != planes[0].shape:
            raise ImageInputError(f"{where}: page {k + 1} is {tuple(page.shape[1:])},"
                                  f" page 1 {tuple(planes[0].shape[1:])}")
        planes.append(page)
    return torch.cat(planes)


def _from_pil(im: Image.Image, where: str) -> torch.Tensor:
    # images.py's decoding (16-bit scaling, palettes, CMYK) keeping grey as one channel and
    # RGBA as four
    return _from_array(pil_to_array(im), where, channels_last=True)


def _from_array(arr: np.ndarray, where: str, channels_last: bool) -> torch.Tensor:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[None] if not channels_last else a[..., None]
    if a.ndim != 3:
        layout = ("(H, W) or (H, W, N) (arrays and .npy files are read as (H, W, N))"
                  if channels_last else "(H, W) or (C, H, W)")
        raise ImageInputError(f"{where}: expected {layout}, got shape {a.shape}")
    if channels_last:
        a = np.moveaxis(a, -1, 0)
    c, h, w = a.shape
    if h < 1 or w < 1 or c < 1:
        raise ImageInputError(f"{where}: empty image of shape {a.shape}")
    if a.dtype == np.uint8:
        out = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        out = a.astype(np.float32) / 65535.0
    elif a.dtype == bool:
        out = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.floating):
        out = a.astype(np.float32)
        if not np.isfinite(out).all():
            raise ImageInputError(f"{where}: contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0 or hi > 1:
            raise ImageInputError(f"{where}: float values must lie in [0, 1], got "
                                  f"[{lo:.4g}, {hi:.4g}] (scale them first, e.g. by the "
                                  "modality's window)")
    else:
        raise ImageInputError(f"{where}: unsupported dtype {a.dtype} (uint8, uint16 or float "
                              "in [0, 1])")
    return torch.from_numpy(np.ascontiguousarray(out))
