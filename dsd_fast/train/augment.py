"""The "strong" training augmentation: what the first default model failed on.

The PH2-only model cut lesions that fill the field of view down to their dark core, and
fell on other clinics' images (ISIC 2016: Dice 0.776). So besides flips and rotation this
draws, per image:
  - scale: zoom in until the lesion fills or overflows the frame (up to 1.8x), or out
    (to 0.75x, the border filled by reflection); a random shift; an aspect change;
  - colour and illumination: brightness, contrast, saturation, per-channel gain (white
    balance), gamma, a radial vignette, sometimes the dark ring of a dermoscope's field;
  - hair: a few dark, thin, curved strokes over the image (the mask is unchanged, as an
    expert's mask is unchanged by hair).
Inputs may be larger than the output (the source is held at twice the model size so zooming
in shows real detail); the output is `size` x `size`.

ROI crops (`dsd-fast train --roi-crops P`, `roi_crop`, at the end) come before either
augmentation: a share of pairs cropped to the square around the mask, the views that
segment(crop="zoom")'s second pass shows the network (zoom.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StrongAugment:
    zoom: tuple[float, float] = (0.75, 1.8)        # log-uniform; > 1 zooms in
    aspect: tuple[float, float] = (0.8, 1.25)      # log-uniform x/y stretch
    shift: float = 0.25                            # of the half-width, each axis
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.25
    channel_gain: float = 0.1
    gamma: tuple[float, float] = (0.8, 1.25)
    vignette_p: float = 0.3
    ring_p: float = 0.15
    hair_p: float = 0.3
    max_hairs: int = 6


def _uniform(b, lo, hi, gen):
    return lo + (hi - lo) * torch.rand(b, generator=gen)


def _log_uniform(b, lo, hi, gen):
    return torch.exp(_uniform(b, math.log(lo), math.log(hi), gen))


def geometry_grid(b: int, size: int, cfg: StrongAugment, gen: torch.Generator) -> torch.Tensor:
    """Sampling grid (B, size, size, 2): output pixel -> source position (normalised)."""
    angle = _uniform(b, 0.0, 2 * math.pi, gen)
    zoom = _log_uniform(b, *cfg.zoom, gen)
    aspect = _log_uniform(b, *cfg.aspect, gen)
    sx = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) / (zoom * aspect.sqrt())
    sy = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) / (zoom / aspect.sqrt())
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos * sy
    theta[:, :, 2] = (torch.rand(b, 2, generator=gen) * 2 - 1) * cfg.shift
    return F.affine_grid(theta, (b, 1, size, size), align_corners=False)


def colour(images: torch.Tensor, cfg: StrongAugment, gen: torch.Generator) -> torch.Tensor:
    b = images.shape[0]

    def around_one(j, shape=(b, 1, 1, 1)):
        return 1 + (torch.rand(shape, generator=gen) * 2 - 1) * j

    x = images * around_one(cfg.brightness) * around_one(cfg.channel_gain, (b, 3, 1, 1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * around_one(cfg.contrast) + mean
    gray = x.mean(dim=1, keepdim=True)
    x = ((x - gray) * around_one(cfg.saturation) + gray).clamp(0, 1)
    return x ** _log_uniform(b, *cfg.gamma, gen).view(b, 1, 1, 1)


def _radius(size: int) -> torch.Tensor:
    c = (torch.arange(size) + 0.5) / size * 2 - 1
    return torch.sqrt(c[None, :] ** 2 + c[:, None] ** 2)          # 1 at the edge midpoints


def illumination(images: torch.Tensor, cfg: StrongAugment, gen: torch.Generator) -> torch.Tensor:
    b, _, s, _ = images.shape
    r = _radius(s)
    strength = _uniform(b, 0.2, 0.7, gen) * (torch.rand(b, generator=gen) < cfg.vignette_p)
    x = images * (1 - strength.view(b, 1, 1, 1) * (r / math.sqrt(2)) ** 2)
    # A dermoscope's circular field: black outside a radius near the frame's edge.
    ring = torch.rand(b, generator=gen) < cfg.ring_p
    radius = _uniform(b, 0.85, 1.2, gen).view(b, 1, 1)
    outside = (r[None] > radius) & ring.view(b, 1, 1)
    return torch.where(outside[:, None], x * 0.05, x)


def hair(images: torch.Tensor, cfg: StrongAugment, gen: torch.Generator) -> torch.Tensor:
    """Dark quadratic-Bezier strokes, about one pixel wide at 64 px, soft-edged."""
    b, _, s, _ = images.shape
    c = (torch.arange(s) + 0.5) / s * 2 - 1
    grid = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).view(-1, 2)   # (s*s, 2)
    out = images.clone()
    tt = torch.linspace(0, 1, 64).view(1, -1, 1)
    for i in range(b):
        if torch.rand((), generator=gen) >= cfg.hair_p:
            continue
        n = int(torch.randint(1, cfg.max_hairs + 1, (), generator=gen))
        ctrl = torch.rand(n, 3, 2, generator=gen) * 2.4 - 1.2               # (n, 3, 2)
        pts = ((1 - tt) ** 2 * ctrl[:, :1] + 2 * (1 - tt) * tt * ctrl[:, 1:2]
               + tt ** 2 * ctrl[:, 2:]).reshape(-1, 2)                       # (n*64, 2)
        dist = torch.cdist(grid, pts).min(dim=1).values.view(s, s)
        width = float(_uniform(1, 0.6, 1.4, gen)) * 2 / s
        alpha = (1 - dist / width).clamp(0, 1) * 0.85
        shade = _uniform(1, 0.05, 0.3, gen).item()
        out[i] = out[i] * (1 - alpha) + shade * alpha
    return out


def strong_augment(images: torch.Tensor, masks: torch.Tensor, size: int,
                   gen: torch.Generator, cfg: StrongAugment = StrongAugment()
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) in [0, 1], masks (B, K, H, W) in {0, 1} (H = W >= size; K
    classes, each resampled alike) -> (B, 3, size, size), (B, K, size, size) with the same
    geometry applied to both."""
    grid = geometry_grid(images.shape[0], size, cfg, gen)
    img = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                        align_corners=False)
    # The mask is resampled bilinearly and thresholded at 1/2: nearest sampling from a 2x
    # source would alias the boundary.
    msk = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False) > 0.5).float()
    img = colour(img, cfg, gen)
    img = illumination(img, cfg, gen)
    img = hair(img, cfg, gen)
    return img.clamp(0, 1), msk


# ----------------------------------------------------------------------------- ROI crops
# `dsd-fast train --roi-crops P`: with probability P a training pair is first cropped to the
# square around its mask's largest component, as segment(crop="zoom")'s pass 2 crops the
# box around pass 1's mask (zoom.py), so the network learns the whole image (pass 1) and
# the zoomed view (pass 2). The margin is drawn around pass 2's 30% and the box shifted,
# the object always inside: pass 1's box is only as good as its coarse mask.
ROI_MARGIN = (0.15, 0.45)      # per side, of the component's larger side, uniform
ROI_SHIFT = 0.4                # of the room the margin leaves, each axis, uniform +-
# Pairs are held at this multiple of the model size when ROI crops are on, so a box of a
# quarter of the image still has the model's resolution (pass 2 crops the decoded image).
ROI_HOLD = 4


def roi_boxes(masks: torch.Tensor, sizes: torch.Tensor, p: float, gen: torch.Generator,
              min_side: int) -> list:
    """masks (B, K, S, S) in {0, 1} held at S x S, of images of original `sizes` (B, 2)
    (H, W) -> a zoom.Box in original pixels per pair, or None (not drawn, or no
    foreground). Draws B + B + 2B numbers from `gen` whatever the masks (p > 0)."""
    from ..zoom import Box, foreground_bbox, square_box
    b, s = masks.shape[0], masks.shape[-1]
    chosen = torch.rand(b, generator=gen) < p
    margins = _uniform(b, *ROI_MARGIN, gen)
    shifts = torch.rand(b, 2, generator=gen) * 2 - 1
    boxes = []
    for i in range(b):
        bbox = foreground_bbox(masks[i].numpy() > 0.5) if chosen[i] else None
        if bbox is None:
            boxes.append(None)
            continue
        h, w = (int(v) for v in sizes[i])
        # the held box in original pixels, outward
        y0, x0 = math.floor(bbox[0] * h / s), math.floor(bbox[1] * w / s)
        y1, x1 = math.ceil(bbox[2] * h / s), math.ceil(bbox[3] * w / s)
        m = float(margins[i])
        side = max(max(y1 - y0, x1 - x0) * (1 + 2 * m), min_side)
        shift = (float(shifts[i, 0]) * ROI_SHIFT * (side - (y1 - y0)),
                 float(shifts[i, 1]) * ROI_SHIFT * (side - (x1 - x0)))
        box = square_box((y0, x0, y1, x1), (h, w), m, min_side, shift)
        # rounding may leave a pixel of the object out: move the box over it
        top = min(max(box.top, y1 - box.height), y0)
        left = min(max(box.left, x1 - box.width), x0)
        boxes.append(Box(min(max(top, 0), h - box.height), min(max(left, 0), w - box.width),
                         box.height, box.width))
    return boxes


def roi_crop(images: torch.Tensor, masks: torch.Tensor, sizes: torch.Tensor, p: float,
             gen: torch.Generator, min_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, C, S, S) in [0, 1] and masks (B, K, S, S) held square at S x S, of
    original `sizes` (B, 2) -> the same shapes, each pair with probability `p` replaced by
    its `roi_boxes` crop resampled to S x S (the box is square in original pixels, so the
    crop is distorted as pass 2's resize of it is). p = 0 draws nothing."""
    if p <= 0:
        return images, masks
    boxes = roi_boxes(masks, sizes, p, gen, min_side)
    todo = [i for i, box in enumerate(boxes) if box is not None]
    if not todo:
        return images, masks
    theta = torch.zeros(len(todo), 2, 3)
    for j, i in enumerate(todo):
        box, (h, w) = boxes[i], (int(v) for v in sizes[i])
        # output [-1, 1] -> the box in the source's normalised coordinates
        theta[j, 0, 0], theta[j, 0, 2] = box.width / w, (box.left + box.width / 2) / w * 2 - 1
        theta[j, 1, 1], theta[j, 1, 2] = box.height / h, (box.top + box.height / 2) / h * 2 - 1
    s = images.shape[-1]
    grid = F.affine_grid(theta, (len(todo), 1, s, s), align_corners=False)
    images, masks = images.clone(), masks.clone()
    images[todo] = F.grid_sample(images[todo], grid, mode="bilinear", padding_mode="border",
                                 align_corners=False)
    masks[todo] = (F.grid_sample(masks[todo], grid, mode="bilinear", padding_mode="border",
                                 align_corners=False) > 0.5).float()
    return images, masks
