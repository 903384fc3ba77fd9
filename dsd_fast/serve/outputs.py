"""One segmentation result -> what the server sends: PNGs in memory and summary numbers.

    mask         (H, W) 8-bit PNG, 0 / 255                 (as `dsd-fast segment` writes)
    probability  (H, W) 16-bit PNG, 0..65535 for 0..1      (as `dsd-fast segment` writes)
    uncertainty  (H, W, 3) PNG: the ensemble std heatmap   (cli/visualise.heatmap)
    overlay      (H, W, 3) PNG: contour and uncertain band (cli/visualise.overlay)

A model of several classes (classes.py) answers, in place of the one-class maps,

    labels       (H, W) 8-bit PNG label map: 0 background, k = the k-th class (the API's
                 mask; `format=png` answers this)
    mask         (H, W) 8-bit PNG, 0 / 255: the labelled region (label > 0)
    overlay      each class's region outlined in its colour, the band where any class is
                 uncertain shaded (as `dsd-fast segment` draws it: cli/class_outputs.py)
    classes      [{name, label, colour, area_pixels, area_fraction, mean_uncertainty,
                   mean_entropy_bits, png: {probability, uncertainty}}] in label order
"""
from __future__ import annotations

import io

import numpy as np
import torch

from ..cli.class_outputs import CLASS_COLOURS, class_overlay
from ..cli.visualise import heatmap, overlay
from ..images import to_uint8_rgb
from ..results import SegmentationResult

UNCERTAIN_ABOVE = 0.2          # the shaded band of the overlay, as the command line's
PNG_LEVEL = 1                  # zlib level: fast, ~15% larger than PIL's default


def png_bytes(arr: np.ndarray) -> bytes:
    """uint8 (H, W) / (H, W, 3) or uint16 (H, W) array -> PNG file bytes."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def encode_result(res: SegmentationResult, image: torch.Tensor, maps: bool = True) -> dict:
    """-> {"width", "height", "area_pixels", "area_fraction", "mean_uncertainty",
    "mean_entropy_bits", "fusion", "png": {name: bytes}}; `maps=False` encodes the mask
    only (a client that asked for the mask PNG). A result of several classes:
    `encode_class_result`."""
    if res.classes is not None:
        return encode_class_result(res, image, maps)
    h, w = res.mask.shape
    area = int(res.mask.sum())
    png = {"mask": png_bytes(res.mask.astype(np.uint8) * 255)}
    if maps:
        png["probability"] = probability_png(res.probability)
        png["uncertainty"] = png_bytes(heatmap(res.std, vmax=0.5))
        png["overlay"] = png_bytes(overlay(image.numpy(), res.mask, res.std,
                                           uncertain_above=UNCERTAIN_ABOVE))
    return {"width": w, "height": h, "area_pixels": area, "area_fraction": area / (h * w),
            # the mean per-pixel std across the ensemble (0: all members agree everywhere)
            "mean_uncertainty": float(res.std.mean()),
            "mean_entropy_bits": float(res.entropy.mean()),
            "fusion": res.fusion, "png": png}


def probability_png(prob: np.ndarray) -> bytes:
    """(H, W) in [0, 1] -> 16-bit PNG, 0..65535 for 0..1."""
    return png_bytes((prob * 65535 + 0.5).astype(np.uint16))


def encode_class_result(res: SegmentationResult, image: torch.Tensor, maps: bool = True) -> dict:
    """A result of K classes -> encode_result's fields (area: the labelled region; mean
    uncertainty and entropy: the means over classes), "nested", "classes" (one entry per
    class, label order) and PNGs (module docstring); `maps=False`: the label map only."""
    h, w = res.mask.shape
    labels = np.ascontiguousarray(res.mask, dtype=np.uint8)
    regions = res.class_regions()
    entropy = res.entropy if res.entropy.ndim == 3 else None
    classes = []
    for c, name in enumerate(res.classes):
        area = int(np.count_nonzero(regions[c]))
        colour = CLASS_COLOURS[c % len(CLASS_COLOURS)]
        entry = {"name": name, "label": c + 1, "colour": "#%02x%02x%02x" % colour,
                 "area_pixels": area, "area_fraction": area / (h * w),
                 "mean_uncertainty": float(res.std[c].mean()),
                 "mean_entropy_bits": float(entropy[c].mean()) if entropy is not None
                 else None}
        if maps:
            entry["png"] = {"probability": probability_png(res.probability[c]),
                            "uncertainty": png_bytes(heatmap(res.std[c], vmax=0.5))}
        classes.append(entry)
    png = {"labels": png_bytes(labels)}
    if maps:
        png["mask"] = png_bytes((labels > 0).astype(np.uint8) * 255)
        band = (res.std > UNCERTAIN_ABOVE).any(axis=0)
        rgb = to_uint8_rgb(image.numpy()).copy()          # class_overlay draws into it
        png["overlay"] = png_bytes(class_overlay(rgb, regions, band))
    area = int(np.count_nonzero(labels))
    return {"width": w, "height": h, "area_pixels": area, "area_fraction": area / (h * w),
            "mean_uncertainty": float(np.mean([e["mean_uncertainty"] for e in classes])),
            "mean_entropy_bits": (float(np.mean([e["mean_entropy_bits"] for e in classes]))
                                  if entropy is not None else None),
            "fusion": res.fusion, "nested": res.nested, "classes": classes, "png": png}
