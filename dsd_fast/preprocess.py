"""From a (3, H, W) image in [0, 1] to the network's input, and the image's content key.

The published DermoSegDiff preprocessing: a plain bilinear resize to S x S (aspect not
kept), then a per-image min-max normalisation to [0, 1]. Each family's Preprocessing says
which steps it uses; `to_model_input` applies them.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RESIZES = ("bilinear",)
NORMALISATIONS = ("minmax", "none")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's `image` input."""
    image_size: int = 128
    resize: str = "bilinear"
    normalise: str = "minmax"       # "minmax": per image, to [0, 1]; "none": kept in [0, 1]

    def __post_init__(self):
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {self.resize!r}")
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {self.normalise!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def to_model_input(chws: list[torch.Tensor], size_or_pre) -> torch.Tensor:
    """List of (3, H, W) -> (N, 3, S, S): resized, then normalised per image.
    `size_or_pre`: a Preprocessing, or an int S (the published steps at size S)."""
    pre = (size_or_pre if isinstance(size_or_pre, Preprocessing)
           else Preprocessing(int(size_or_pre)))
    x = torch.stack([resize_image(c, pre.image_size) for c in chws])
    return minmax_normalise(x) if pre.normalise == "minmax" else x


def resize_mask_nearest(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) binary mask -> (size, size) with nearest neighbour (published mask resize)."""
    return F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0]


def content_key(chw: torch.Tensor) -> str:
    """A name for an image made from its pixels: the default noise key of `segment()`, so
    the same image gets the same initial noise (and mask) wherever it stands in a call.
    sha256 over the (3, H, W) float32 values and the shape, 16 hex digits."""
    t = chw.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(repr(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return "px:" + h.hexdigest()[:16]
