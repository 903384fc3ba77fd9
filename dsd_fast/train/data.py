"""Training data: image/mask pairs from two folders, matched by file stem, held in memory at
model size, with augmentations written in torch (no torchvision: it does not import beside
torch 2.13 here).

A model of several classes (classes.py) trains on one mask file per class, as Drishti-GS
stores them: `classes=("disc", "cup")` matches image `<stem>.jpg` with `<stem>_disc.png` and
`<stem>_cup.png`; the masks stack into (K, S, S) in that order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..classes import load_class_mask
from ..images import ImageInputError, list_images, load_mask, to_chw
from ..preprocess import minmax_normalise, resize_image


def read_id_list(path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def class_mask_stems(masks: dict[str, Path], classes) -> dict[str, tuple[Path, ...]]:
    """{image stem: (mask path per class)} from a folder's {stem: path} of per-class masks
    `<stem>_<class>`; a stem lacking one of its classes' masks is an error."""
    found: dict[str, dict[str, Path]] = {}
    for stem, path in masks.items():
        for c in classes:
            if stem.endswith(f"_{c}") and len(stem) > len(c) + 1:
                found.setdefault(stem[:-len(c) - 1], {})[c] = path
    incomplete = {s: [c for c in classes if c not in got] for s, got in found.items()
                  if len(got) != len(classes)}
    if incomplete:
        s, missing = next(iter(sorted(incomplete.items())))
        raise ValueError(f"{len(incomplete)} image stem(s) lack a class mask, e.g. {s!r}: "
                         f"no {', '.join(f'{s}_{c}' for c in missing)} (one mask per class, "
                         f"<stem>_<class>, for classes {list(classes)})")
    return {s: tuple(got[c] for c in classes) for s, got in found.items()}


def match_pairs(image_dir, mask_dir, ids: list[str] | None = None, classes=None
                ) -> list[tuple[str, Path, Path | tuple[Path, ...]]]:
    """(stem, image path, mask path) for each id (or every stem); unmatched pairs are errors.
    With `classes` (names), each image has one mask per class, `<stem>_<class>`, and the
    third entry is their paths in class order."""
    images, masks = list_images(image_dir), list_images(mask_dir)
    if classes:
        masks = class_mask_stems(masks, classes)
    if ids is None:
        missing_masks = sorted(set(images) - set(masks))
        missing_images = sorted(set(masks) - set(images))
        if missing_masks or missing_images:
            raise ValueError(
                f"unmatched pairs: images without a mask {missing_masks[:5]}, masks without "
                f"an image {missing_images[:5]} (matched by file stem)")
        ids = sorted(images)
    pairs = []
    for i in ids:
        if i not in images:
            raise ValueError(f"id {i!r}: no image with that stem in {image_dir}")
        if i not in masks:
            raise ValueError(f"id {i!r}: no mask with that stem in {mask_dir}")
        pairs.append((i, images[i], masks[i]))
    if not pairs:
        raise ValueError(f"no image/mask pairs found in {image_dir} and {mask_dir}")
    return pairs


@dataclass
class Sample:
    stem: str
    image: torch.Tensor        # (3, S, S) float32 in [0, 1], resized, NOT yet min-max normalised
    mask: torch.Tensor         # (K, S, S) float32 in {0, 1}: K = 1, or one channel per class
    original_mask: torch.Tensor  # (H, W) bool (K = 1) or (K, H, W) bool, scored at that size
    original_size: tuple[int, int]


def load_pairs(pairs, size: int) -> list[Sample]:
    """Each (stem, image, mask path or per-class mask paths) read and resized to `size`."""
    samples = []
    for stem, ip, mp in pairs:
        img = to_chw(ip)
        paths = mp if isinstance(mp, tuple) else (mp,)
        masks = [load_class_mask(p) if isinstance(mp, tuple) else load_mask(p) for p in paths]
        for p, mask in zip(paths, masks):
            if tuple(mask.shape) != tuple(img.shape[1:]):
                raise ImageInputError(
                    f"{p}: mask size {tuple(mask.shape)} differs from image size "
                    f"{tuple(img.shape[1:])} ({ip})")
        mask = torch.stack(masks)                                   # (K, H, W)
        small_img = resize_image(img, size)
        small_mask = F.interpolate(mask[None].float(), size=(size, size), mode="nearest")[0]
        samples.append(Sample(stem, small_img, small_mask,
                              mask if isinstance(mp, tuple) else mask[0],
                              tuple(mask.shape[1:])))
    return samples


def _rotation_grid(angles: torch.Tensor, flips_h: torch.Tensor, flips_v: torch.Tensor,
                   size: int) -> torch.Tensor:
    cos, sin = torch.cos(angles), torch.sin(angles)
    sx = torch.where(flips_h, -1.0, 1.0)
    sy = torch.where(flips_v, -1.0, 1.0)
    theta = torch.zeros(angles.numel(), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos * sy
    return F.affine_grid(theta, (angles.numel(), 1, size, size), align_corners=False)


def augment(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator,
            colour_jitter: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, rotation by any angle (lesions have no orientation), small colour jitter.

    images (B, 3, S, S) in [0, 1], masks (B, K, S, S) in {0, 1}. Corners uncovered by the
    rotation are filled by reflection so no artificial black borders appear.
    """
    b, _, s, _ = images.shape
    angles = torch.rand(b, generator=gen) * 2 * math.pi
    fh = torch.rand(b, generator=gen) < 0.5
    fv = torch.rand(b, generator=gen) < 0.5
    grid = _rotation_grid(angles, fh, fv, s)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                           align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="reflection",
                          align_corners=False)
    if colour_jitter > 0:
        j = colour_jitter
        brightness = 1 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * j
        contrast = 1 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * j
        saturation = 1 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * j
        images = images * brightness
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * contrast + mean
        gray = images.mean(dim=1, keepdim=True)
        images = ((images - gray) * saturation + gray).clamp(0, 1)
    return images, masks


class PairBatches:
    """Endless random batches: (image (B,3,S,S) in [0, 1], min-max normalised per image
    unless `normalise` is False, x0 (B,K,S,S) in [-1,1])."""

    def __init__(self, samples: list[Sample], batch_size: int, gen: torch.Generator,
                 augment_data: bool = True, normalise: bool = True):
        self.images = torch.stack([s.image for s in samples])
        self.masks = torch.stack([s.mask for s in samples])
        self.batch_size = batch_size
        self.gen = gen
        self.augment_data = augment_data
        self.normalise = normalise

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.images.shape[0], (self.batch_size,), generator=self.gen)
        img, msk = self.images[idx], self.masks[idx]
        if self.augment_data:
            img, msk = augment(img, msk, self.gen)
        return (minmax_normalise(img) if self.normalise else img), msk * 2 - 1
