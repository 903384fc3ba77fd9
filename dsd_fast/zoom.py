"""The coarse-to-fine "zoom" crop (segment(crop="zoom")): the geometry of its passes.

The networks see a 64 px view of the whole image, where a small structure (an optic disc at
~17% of a fundus photo's width, a small polyp or breast lesion) is ~10 px wide and loses its
boundary. Zoom segments two times, or three with zoom_passes=3 (segmenter.py runs the
passes):

    pass 1   the whole image's view at a cheap setting (ZOOM_PASS1) -> a coarse mask
    box A    the square around pass 1's largest foreground component (all classes
             together), enlarged by ZOOM_MARGIN of its size on each side, at least the
             model's input size, shifted into the image and clipped to it (`zoom_box`)
    pass 2   the call's own setting on box A, cropped from the image at its decoded
             resolution (`crop_image`), reduced to at most (16 S)^2 pixels (`crop_limit`,
             `fit_pixels`) and resized to the model's input like any image. Where pass 1
             found nothing, pass 2 runs on the whole image: the result is crop="full"'s
    paste    pass 2's mask and maps inside A, pass 1's outside (`paste`); with
             zoom_outside="background", background outside the finest box instead
             (`clear_outside`)
  with zoom_passes=3, after pass 2:
    box B    the same square around pass 2's largest component, pass 2's mask taken only
             inside box A (`refined_box`); B may reach beyond A
    pass 3   the call's own setting on box B, cropped as pass 2's. Skipped where pass 2
             found nothing inside A (its result stands) and where B is A (the same view
             again would only draw other noise at the cost of a whole pass)
    paste    pass 3's mask and maps inside B, over pass 2's pasted result

Why a third pass, and why only when asked: pass 1 sees the structure at ~10 px, so box A is
often too large or off centre (on fundus photos it sometimes holds a bright artefact too);
pass 2 sees it several times larger, and the box around its mask is centred and sized on
the structure itself. Only pass 2's mask inside A is used: outside A there is only pass 1's
coarse view, whose artefacts would pull the box away. That helps the optic disc and cup of
fundus photos but lowered the Dice of BUSI's breast lesions (docs/usage.md gives both
measurements and their commands), so two passes are the default and a model file may say
3 ("zoom_passes" metadata).

With zoom_boxes=N > 1, box A is chosen among up to N candidates (`candidate_boxes`: the box
above, then boxes around the surest parts of pass 1's foreground and its second objects):
pass 2 runs on each and the box whose maps are surest (`drawn_entropy`) is kept, for the
photos where pass 1 draws a glare or an oversized region as the object (docs/usage.md).

Pass 1's maps stand outside the boxes rather than zeros: they are a measurement of those
pixels (the coarse ensemble's), so a second lesion that pass 1 found is kept and the
uncertainty there is what the coarse ensemble showed, not a certainty nobody measured. Each
box holds its pass's largest component with a 30% margin, so the pass beneath is mostly
background at its edge and the seam is rarely visible. A task with one object per image by
anatomy (one optic disc per fundus photo) has nothing to keep there: zoom_outside=
"background" (a model file's "zoom_outside" metadata) makes everything outside the finest
box background, which drops pass 1's false regions away from the object (docs/usage.md
gives what it changed on Drishti-GS val). The training side (`dsd-fast train
--roi-crops P`, train/augment.py) draws boxes with the same `square_box` around the true
mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .results import SegmentationResult

# Pass 1's setting: 5 members x 5 DDIM steps on the trailing grid (a family that walks its
# own grid: leading), or the call's own where it is cheaper (options in segmenter.py).
ZOOM_PASS1 = {"sampler": "ddim", "steps": 5, "ensemble": 5, "spacing": "trailing"}
ZOOM_MARGIN = 0.3            # of the component's larger side, added on each side
# Pass 2's crop is at most (CROP_SIDES * S)^2 pixels for a model input of S: the bound the
# command line's reduced decode of a large file uses for the whole image (cli/discover.py,
# reduced_pixels), ample for the antialiased resize to S x S, and what keeps a large box of
# a large image from being held at full resolution.
CROP_SIDES = 16
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Box:
    """A rectangle of an image in pixels: rows top..top+height-1, columns left..left+width-1."""
    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return (slice(self.top, self.top + self.height),
                slice(self.left, self.left + self.width))

    def as_list(self) -> list[int]:
        return [self.top, self.left, self.height, self.width]

    def contains(self, bbox: tuple[int, int, int, int]) -> bool:
        """Whether (y0, x0, y1, x1) (ends exclusive) lies inside the box."""
        y0, x0, y1, x1 = bbox
        return (self.top <= y0 and self.left <= x0 and y1 <= self.top + self.height
                and x1 <= self.left + self.width)


def _union(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool of `mask` ((H, W), or (K, H, W): the union of the K classes)."""
    mask = np.asarray(mask, dtype=bool)
    return mask.any(axis=0) if mask.ndim == 3 else mask


def _components(mask: np.ndarray, ranks: int, share: float = 0.0
                ) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1), ends exclusive, of the (H, W) `mask`'s 8-connected components,
    largest first (ties: the first in raster order), at most `ranks`, none smaller than
    `share` of the largest."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")[:ranks]
    found = []
    for j in order:
        if sizes[j] < share * sizes[order[0]]:
            break
        one = labels == j + 1 if n > 1 else mask
        rows, cols = np.flatnonzero(one.any(axis=1)), np.flatnonzero(one.any(axis=0))
        found.append((int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
    return found


def foreground_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1), ends exclusive, of the largest 8-connected component of `mask`
    ((H, W) bool, or (K, H, W): the union of the K classes); None when it is empty. Ties
    go to the first component in raster order."""
    found = _components(_union(mask), ranks=1)
    return found[0] if found else None


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))              # half up, not Python's half to even


def square_box(bbox: tuple[int, int, int, int], size_hw: tuple[int, int],
               margin: float = ZOOM_MARGIN, min_side: int = 0,
               shift: tuple[float, float] = (0.0, 0.0)) -> Box:
    """The square around `bbox` (y0, x0, y1, x1) in an image of `size_hw` (H, W):

        side   = max(max(y1 - y0, x1 - x0) * (1 + 2 * margin), min_side), rounded half up
        centre = the bbox's centre + `shift` (rows, columns; training's random shift)
    then each side cut to the image's (a 30-row image gives at most 30 rows: square-ish)
    and the box moved, not cut, to lie inside the image."""
    y0, x0, y1, x1 = bbox
    h, w = size_hw
    side = max(max(y1 - y0, x1 - x0) * (1 + 2 * margin), min_side)
    bh, bw = min(h, max(1, _round(side))), min(w, max(1, _round(side)))
    top = _round((y0 + y1) / 2 + shift[0] - bh / 2)
    left = _round((x0 + x1) / 2 + shift[1] - bw / 2)
    return Box(min(max(top, 0), h - bh), min(max(left, 0), w - bw), bh, bw)


def zoom_box(mask: np.ndarray, margin: float = ZOOM_MARGIN, min_side: int = 0) -> Box | None:
    """Pass 2's box from pass 1's `mask` ((H, W) or (K, H, W) bool at the image's size):
    `square_box` around its largest component; None when the mask is empty."""
    bbox = foreground_bbox(mask)
    if bbox is None:
        return None
    return square_box(bbox, np.shape(mask)[-2:], margin, min_side)


# Where pass 1 is unsure what the object is (a bright artefact or half of a fundus photo
# drawn as the disc beside the disc itself), zoom_boxes=N tries up to N boxes: around the
# largest components of pass 1's mask and of its foreground probability above these
# levels (the object is often the most certain part of an oversized region).
CANDIDATE_LEVELS = (0.9, 0.75)
CANDIDATE_RANKS = 2          # components taken from each mask, largest first
CANDIDATE_SHARE = 0.25       # ... at least this share of that mask's largest component
SAME_BOX_IOU = 0.7           # a box overlapping an earlier one this much is not tried


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes' pixels."""
    h = min(a.top + a.height, b.top + b.height) - max(a.top, b.top)
    w = min(a.left + a.width, b.left + b.width) - max(a.left, b.left)
    inter = max(h, 0) * max(w, 0)
    return inter / (a.height * a.width + b.height * b.width - inter)


def candidate_boxes(regions: np.ndarray, probability: np.ndarray, count: int,
                    margin: float = ZOOM_MARGIN, min_side: int = 0) -> list[Box]:
    """Up to `count` boxes for pass 2 (zoom_boxes) from pass 1's result at the image's size:
    `regions` ((H, W) or (K, H, W) bool: its class regions, all classes together) and
    `probability` ((H, W) or (K, H, W): the foreground's is the largest class's).
    The first is `zoom_box(regions)`, the box a single pass 2 takes; then, in this order,
    the boxes around the largest component of the foreground probability above each of
    CANDIDATE_LEVELS, then the second components of each mask (CANDIDATE_RANKS,
    CANDIDATE_SHARE), each `square_box` as `zoom_box`'s and skipped where it overlaps a box
    already taken by SAME_BOX_IOU or more. [] where pass 1 drew nothing."""
    regions = _union(regions)
    probability = np.asarray(probability)
    fg = probability.max(axis=0) if probability.ndim == 3 else probability
    per_mask = [_components(m, CANDIDATE_RANKS, CANDIDATE_SHARE)
                for m in (regions, *(fg > level for level in CANDIDATE_LEVELS))]
    if not per_mask[0]:
        return []
    boxes: list[Box] = []
    for rank in range(CANDIDATE_RANKS):
        for found in per_mask:
            if rank >= len(found) or len(boxes) == count:
                continue
            box = square_box(found[rank], regions.shape, margin, min_side)
            if all(box_iou(box, kept) < SAME_BOX_IOU for kept in boxes):
                boxes.append(box)
    return boxes


def drawn_entropy(result: SegmentationResult) -> float:
    """How unsure a pass is of what it draws: the mean entropy (bits) of `result`'s maps
    over its foreground (all classes together; every class's entropy there); infinity where
    it draws nothing. zoom_boxes keeps the candidate box whose pass 2 scores lowest: a view
    that holds the object gives confident maps, a view of an artefact or of a region too
    large for the object gives hesitant ones (MODEL_CARD, fundus-disc-cup)."""
    regions = _union(result.class_regions())
    if not regions.any():
        return math.inf
    return float(np.asarray(result.entropy)[..., regions].mean())


def refined_box(regions: np.ndarray, box: Box, size_hw: tuple[int, int],
                margin: float = ZOOM_MARGIN, min_side: int = 0) -> Box | None:
    """Pass 3's box B: `square_box` around the largest component of pass 2's `regions`
    ((K, h, w) or (h, w) bool at `box`'s size: pass 2's result, so only what it found
    inside its box A), in the pixels of the image (`size_hw`, (H, W)), where B may reach
    beyond A. None where pass 2 found nothing."""
    bbox = foreground_bbox(regions)
    if bbox is None:
        return None
    y0, x0, y1, x1 = bbox
    shifted = (y0 + box.top, x0 + box.left, y1 + box.top, x1 + box.left)
    return square_box(shifted, size_hw, margin, min_side)


def crop_limit(side: int) -> int:
    """The most pixels a finer pass's crop is handed on with, for a model input of `side` (S):
    (CROP_SIDES * S)^2."""
    return (CROP_SIDES * side) ** 2


def box_slices(box: Box, size_hw: tuple[int, int], picture_hw: tuple[int, int]
               ) -> tuple[slice, slice]:
    """The rows and columns of a picture of `picture_hw` (h, w) under `box`, a box in the
    pixels of the image's result (`size_hw`, (H, W)). The picture may be a reduced decode
    (the command line's of a file above --max-pixels): the box is scaled to it, outward,
    at least one pixel."""
    h, w = picture_hw
    big_h, big_w = size_hw
    if (h, w) == (big_h, big_w):
        return box.slices
    sy, sx = h / big_h, w / big_w
    y0, x0 = int(math.floor(box.top * sy)), int(math.floor(box.left * sx))
    y1 = min(h, max(y0 + 1, int(math.ceil((box.top + box.height) * sy))))
    x1 = min(w, max(x0 + 1, int(math.ceil((box.left + box.width) * sx))))
    return slice(y0, y1), slice(x0, x1)


def crop_image(image: torch.Tensor, size_hw: tuple[int, int], box: Box) -> torch.Tensor:
    """(C, h, w) picture of an image whose result is `size_hw` (H, W) -> its (C, h', w')
    part under `box` (in (H, W) pixels; `box_slices`)."""
    rows, cols = box_slices(box, size_hw, tuple(image.shape[-2:]))
    return image[:, rows, cols]


def fit_pixels(chw: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """(C, h, w) -> itself within `max_pixels`, else reduced to at most that many pixels,
    aspect kept, with the antialiased bilinear resize of the model's view
    (preprocess.resize_image), so reducing first changes the view little."""
    h, w = chw.shape[-2:]
    if h * w <= max_pixels:
        return chw
    k = math.sqrt(max_pixels / (h * w))
    size = (max(1, int(h * k)), max(1, int(w * k)))         # floors: their product fits
    return F.interpolate(chw[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def paste(coarse: SegmentationResult, fine: SegmentationResult, box: Box,
          seen_hw: tuple[int, int] | None = None) -> SegmentationResult:
    """A finer pass's result `fine` (at the box's size) into `coarse` (at the image's: pass
    1's result, or pass 2's pasted into it): mask, probability, std and entropy are fine's
    inside the box and coarse's outside (each mask made by its pass's fusion: with "mean",
    the pasted probability > 0.5; the label map of several classes is per pixel, so pasting
    it is labelling the pasted maps).
    Samples (asked with return_samples): fine's members inside; outside, coarse's members
    where it has them (pass 2's, pasted: the call's members), else, where no member of the
    call's setting looked, every member carries pass 1's mask (its class regions for K
    classes; pass 1 keeps no samples).
    The result's `zoom`: {"box": [top, left, height, width], "input": [h, w]} of this box,
    input the size of the crop the pass's view was made from (`seen_hw`; the box's unless
    reduced), and `coarse`'s "pass2_box" / "pass2_input" where it has them (pass 3
    pasted into pass 2's result: the segmenter records pass 2's box there).
    `coarse`'s maps (and samples) are written in place and become the result's: the
    segmenter gives the coarser result up here, and a large image's maps are not held
    twice."""
    rows, cols = box.slices

    def put(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
        outer[..., rows, cols] = inner
        return outer

    samples = None
    if fine.samples is not None:
        if coarse.samples is not None:
            samples = coarse.samples
        else:
            outside = coarse.class_regions() if coarse.classes is not None else coarse.mask
            samples = np.broadcast_to(outside, (fine.samples.shape[0], *outside.shape)).copy()
        samples[..., rows, cols] = fine.samples
    record = {"box": box.as_list(), "input": list(seen_hw or (box.height, box.width))}
    for name in ("pass2_box", "pass2_input"):
        if coarse.zoom and name in coarse.zoom:
            record[name] = list(coarse.zoom[name])
    return SegmentationResult(
        mask=put(coarse.mask, fine.mask), probability=put(coarse.probability, fine.probability),
        std=put(coarse.std, fine.std), entropy=put(coarse.entropy, fine.entropy),
        samples=samples, fusion=fine.fusion, classes=fine.classes, nested=fine.nested,
        zoom=record)


def clear_outside(result: SegmentationResult, box: Box) -> SegmentationResult:
    """zoom_outside="background": `result` (at the image's size, its finest pass pasted
    into `box`) with background outside the box, in place: mask False (label 0 for
    several classes), probability, std and entropy 0, every sample's mask (class regions)
    False; its `zoom` record gains "outside": "background". Written as the four strips
    around the box, so no image-sized index is made."""
    top, left = box.top, box.left
    bottom, right = top + box.height, left + box.width
    arrays = [result.mask, result.probability, result.std, result.entropy]
    if result.samples is not None:
        arrays.append(result.samples)
    for a in arrays:
        a[..., :top, :] = 0
        a[..., bottom:, :] = 0
        a[..., top:bottom, :left] = 0
        a[..., top:bottom, right:] = 0
    result.zoom["outside"] = "background"
    return result


def zoom_record(zoom: dict, model_input: str) -> dict:
    """A zoomed image's fields in the command line's results.json, from its result's
    `zoom` and `model_input` (what pass 1's view was made from: "full" or "downscaled
    from WxH"). Where a finer pass ran on a box, "model_input" says what the view of the
    finest pass (zoom["box"]'s: pass 2's, or pass 3's where zoom_passes=3 ran one) was
    made from, the crop ("full": the box at the file's resolution; "downscaled from WxH":
    a crop of W x H pixels); pass 1's moves to zoom["pass1_input"]; with zoom_passes=3,
    pass 2's box and crop size stay in zoom["pass2_box"] / zoom["pass2_input"]. Where
    pass 1 found nothing, pass 2 saw pass 1's view and model_input stays."""
    if zoom.get("box") is None:
        return {"zoom": dict(zoom)}
    h, w = zoom["input"]
    seen = "full" if [h, w] == list(zoom["box"][2:]) else f"downscaled from {w}x{h}"
    return {"model_input": seen, "zoom": {**zoom, "pass1_input": model_input}}
