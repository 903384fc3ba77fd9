"""One segmentation result -> what the server sends: PNGs in memory and summary numbers.

    mask         (H, W) 8-bit PNG, 0 / 255                 (as `dsd-fast segment` writes)
    probability  (H, W) 16-bit PNG, 0..65535 for 0..1      (as `dsd-fast segment` writes)
    uncertainty  (H, W, 3) PNG: the ensemble std heatmap   (cli/visualise.heatmap)
    overlay      (H, W, 3) PNG: contour and uncertain band (cli/visualise.overlay)
"""
from __future__ import annotations

import io

import numpy as np
import torch

from ..cli.visualise import heatmap, overlay
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
    only (a client that asked for the mask PNG)."""
    h, w = res.mask.shape
    area = int(res.mask.sum())
    png = {"mask": png_bytes(res.mask.astype(np.uint8) * 255)}
    if maps:
        png["probability"] = png_bytes((res.probability * 65535 + 0.5).astype(np.uint16))
        png["uncertainty"] = png_bytes(heatmap(res.std, vmax=0.5))
        png["overlay"] = png_bytes(overlay(image.numpy(), res.mask, res.std,
                                           uncertain_above=UNCERTAIN_ABOVE))
    return {"width": w, "height": h, "area_pixels": area, "area_fraction": area / (h * w),
            # the mean per-pixel std across the ensemble (0: all members agree everywhere)
            "mean_uncertainty": float(res.std.mean()),
            "mean_entropy_bits": float(res.entropy.mean()),
            "fusion": res.fusion, "png": png}
