"""Turning user images into the network's input, and checking them on the way.

Accepted: file paths (str / Path), PIL images, numpy arrays (H x W, H x W x 3, H x W x 4;
uint8, uint16, or float in [0, 1]) and torch tensors (3 x H x W, or B x 3 x H x W which is
split into B images). Grayscale is replicated to RGB, alpha is dropped.
Every image becomes a float32 (3, H, W) tensor in [0, 1] at its original size; `to_model_input`
then resizes (bilinear, as published) and min-max normalises per image.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


class ImageInputError(ValueError):
    """A user-supplied image could not be used; the message says which and why."""


def _describe(item, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"image {index} ({os.fspath(item)})"
    return f"image {index} ({type(item).__name__})"


def load_image_file(path) -> np.ndarray:
    """Read an image file to a numpy array (H, W[, C]); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    if path.is_dir():
        raise ImageInputError(f"{path}: is a folder, expected an image file")
    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_array(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageInputError(f"{path}: unreadable or corrupt image ({e})") from None


def pil_to_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.int64)
        # 16-bit grayscale: scale by the format's range, not by the content.
        return (arr.clip(0, 65535) / 65535.0).astype(np.float32)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode not in ("L", "RGB", "RGBA", "LA"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    if im.mode == "LA":
        im = im.convert("L")
    return np.asarray(im)


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
        if images.dim() == 4:
            items = list(images.unbind(0))
        else:
            items = [images]
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


def minmax_normalise(x: torch.Tensor) -> torch.Tensor:
    """Per image (over C, H, W) to [0, 1], as published. A constant image maps to zeros."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def resize_image(chw: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> (3, size, size), bilinear (published: a plain resize, aspect not kept)."""
    return F.interpolate(chw[None], size=(size, size), mode="bilinear",
                         align_corners=False, antialias=True)[0]


def to_model_input(chws: list[torch.Tensor], size: int) -> torch.Tensor:
    """List of (3, H, W) -> (N, 3, size, size): resized, then min-max normalised per image."""
    return minmax_normalise(torch.stack([resize_image(c, size) for c in chws]))


def resize_mask_nearest(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) binary mask -> (size, size) with nearest neighbour (published mask resize)."""
    return F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0]
