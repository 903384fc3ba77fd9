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
has no meaning to convert to and is an ImageInputError naming both counts.

What `read_channels` accepts beyond the RGB reader of images.py: numpy arrays (H, W, N)
with any N, tensors (N, H, W), `.npy` files (H, W[, N]) and multi-page TIFFs whose pages are
the channels (one grayscale page each). Value ranges as images.py: uint8 / 255, uint16 /
65535, floats in [0, 1] (finite). RGB models keep images.py's reader exactly (EXIF
orientation, CMYK through ICC), so their inputs, noise keys and masks are unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import ImageInputError, _describe, open_image, pil_to_array, to_chw, upright

LUMA_601 = (0.299, 0.587, 0.114)


class ChannelNote(UserWarning):
    """Images were converted to the model's channel count (grayscale replicated, RGB to
    luma, alpha dropped)."""


def read_channels(item, index: int = 0) -> tuple[torch.Tensor, bool]:
    """Any accepted single image -> (float32 (C, H, W) in [0, 1] with the channels it has,
    whether its last channel is an alpha). Files, PIL images and (H, W, 2|4) arrays carry
    alpha as images do (LA, RGBA); a (C, H, W) tensor's channels are all data."""
    where = _describe(item, index)
    if isinstance(item, (str, os.PathLike)):
        chw = _read_file(Path(item), where)
    elif isinstance(item, Image.Image):
        chw = _from_pil(item, where)
    elif isinstance(item, np.ndarray):
        chw = _from_array(item, where, channels_last=True)
    elif isinstance(item, torch.Tensor):
        if item.dim() == 2:
            item = item[None]
        if item.dim() != 3:
            raise ImageInputError(f"{where}: expected a tensor of shape (C, H, W), got "
                                  f"{tuple(item.shape)}")
        return _from_array(item.detach().cpu().numpy(), where, channels_last=False), False
    else:
        return to_chw(item, index), False     # images.py names what is accepted
    return chw, chw.shape[0] in (2, 4) and not _is_npy(item)


def match_channels(chw: torch.Tensor, want: int, where: str = "image",
                   alpha: bool = False) -> tuple:
    """(C, H, W) -> ((want, H, W), what was converted or None). `alpha`: the last channel
    is an alpha (LA, RGBA), dropped when the model does not take it."""
    have = chw.shape[0]
    if have == want:
        return chw, None
    if alpha and want in (1, 3):                    # LA / RGBA: the alpha goes first
        chw, have = chw[:-1], have - 1
        if have == want:
            return chw, "alpha dropped"
    if have == 1 and want == 3:
        return chw.expand(3, -1, -1).contiguous(), "grayscale replicated to RGB"
    if have == 3 and want == 1:
        y = sum(w * chw[c] for c, w in enumerate(LUMA_601))
        return y[None].clamp(0, 1), "RGB converted to luma (ITU-R BT.601)"
    raise ImageInputError(
        f"{where}: the model takes {want}-channel images, this one has {chw.shape[0]} "
        f"channel{'s' if chw.shape[0] != 1 else ''}"
        + (f"; give ({want}, H, W) tensors, (H, W, {want}) arrays, .npy files or "
           f"{want}-page TIFFs" if want not in (1, 3) else ""))


def model_image(item, index: int, channels: int) -> tuple[torch.Tensor, str | None]:
    """One user image for a model taking `channels`: RGB models read it as images.py always
    has; others with its own channels, then matched. -> ((channels, H, W), conversion)."""
    if channels == 3:
        return to_chw(item, index), None
    chw, alpha = read_channels(item, index)
    return match_channels(chw, channels, _describe(item, index), alpha)


def to_model_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, 3, H, W) RGB batches (training data) -> (B, channels, H, W); 1: luma."""
    if channels == images.shape[1]:
        return images
    return torch.stack([match_channels(im, channels)[0] for im in images])


# ----------------------------------------------------------------------------- readers
def _is_npy(item) -> bool:
    return isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() == ".npy"


def _read_file(path: Path, where: str) -> torch.Tensor:
    if not path.exists():
        raise ImageInputError(f"{where}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ImageInputError(f"{where}: not a readable .npy array ({e})") from None
        return _from_array(arr, where, channels_last=True)
    with open_image(path) as im:
        pages = getattr(im, "n_frames", 1)
        if pages > 1 and (im.format or "").upper() == "TIFF":
            planes = []
            for k in range(pages):                  # a multi-page TIFF: one channel a page
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
        im.load()
        return _from_pil(upright(im), where)


def _from_pil(im: Image.Image, where: str) -> torch.Tensor:
    # images.py's decoding (16-bit scaling, palettes, CMYK) keeping grey as one channel and
    # RGBA as four
    return _from_array(pil_to_array(im), where, channels_last=True)


def _from_array(arr: np.ndarray, where: str, channels_last: bool) -> torch.Tensor:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[None] if not channels_last else a[..., None]
    if a.ndim != 3:
        raise ImageInputError(f"{where}: expected (H, W) or (H, W, C) / (C, H, W), got "
                              f"shape {a.shape}")
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
