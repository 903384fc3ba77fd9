"""Pictures people look at: the lesion contour over the image, and an uncertainty heatmap."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..images import strip_rows, to_uint8_rgb

CONTOUR_RGB = (0, 255, 0)
UNCERTAIN_RGB = (255, 200, 0)


def contour(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """(H, W) bool -> (H, W) bool band just inside the mask's boundary."""
    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def overlay(image, mask: np.ndarray, std: np.ndarray | None = None,
            uncertain_above: float = 0.2) -> np.ndarray:
    """Image with the mask contour drawn and pixels whose ensemble std exceeds
    `uncertain_above` shaded (the band where the samples disagree). (H, W, 3) uint8."""
    out = to_uint8_rgb(image).astype(np.float32)
    if std is not None:
        band = std > uncertain_above
        out[band] = 0.55 * out[band] + 0.45 * np.array(UNCERTAIN_RGB, np.float32)
    line = contour(mask, thickness=max(1, round(max(mask.shape) / 200)))
    out[line] = CONTOUR_RGB
    return out.astype(np.uint8)


def heatmap(values: np.ndarray, vmax: float = 0.5) -> np.ndarray:
    """(H, W) in [0, vmax] -> (H, W, 3) uint8, dark blue (certain) to yellow (uncertain)."""
    v = np.clip(values / vmax, 0, 1)[..., None]
    stops = np.array([[20, 20, 80], [180, 40, 120], [255, 220, 40]], np.float32)
    low = stops[0] + (stops[1] - stops[0]) * np.clip(v * 2, 0, 1)
    high = stops[1] + (stops[2] - stops[1]) * np.clip(v * 2 - 1, 0, 1)
    return np.where(v < 0.5, low, high).astype(np.uint8)


# ----------------------------------------------------------------- large-image helpers
# The batch command (run.py) writes these pictures at the original size, which can be
# 64 megapixels. `overlay` and `heatmap` above build several float32 copies of the whole
# image (12 bytes per pixel each); the functions below give the same pixels while working
# on horizontal strips of about images.STRIP_PIXELS, so their temporaries stay small.

def overlay_inplace(rgb: np.ndarray, mask: np.ndarray, band: np.ndarray | None) -> np.ndarray:
    """What `overlay(rgb, mask, std)` returns, drawn into `rgb` itself ((H, W, 3) uint8,
    modified and returned); `band` is `std > uncertain_above` (bool, (H, W)) or None."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    if band is not None:
        # The blend of `overlay` (float32, truncated to uint8) depends only on the byte and
        # the channel, so a (256, 3) table gives the same bytes without float copies.
        lut = (0.55 * np.arange(256, dtype=np.float32)[:, None]
               + 0.45 * np.array(UNCERTAIN_RGB, np.float32)).astype(np.uint8)
        h, w = band.shape
        for r0, r1 in strip_rows(h, w):
            b = band[r0:r1]
            if b.any():
                sub = rgb[r0:r1]
                shaded = np.empty_like(sub)
                for c in range(3):
                    np.take(lut[:, c], sub[..., c], out=shaded[..., c])
                np.copyto(sub, shaded, where=b[..., None])
    line = contour(mask, thickness=max(1, round(max(mask.shape) / 200)))
    rgb[line] = CONTOUR_RGB
    return rgb


HEATMAP_LEVELS = 1024


def heatmap_strips(values: np.ndarray, vmax: float = 0.5) -> np.ndarray:
    """`heatmap(values, vmax)` through a table of HEATMAP_LEVELS colours, strip by strip:
    within 1 of heatmap()'s bytes (the colours are piecewise linear with slopes below 256
    per unit), ~10x faster, and no float (H, W, 3) copies."""
    lut = heatmap(np.linspace(0, vmax, HEATMAP_LEVELS, dtype=np.float32), vmax)
    h, w = values.shape
    out = np.empty((h, w, 3), np.uint8)
    scale = np.float32((HEATMAP_LEVELS - 1) / vmax)
    for r0, r1 in strip_rows(h, w):
        idx = np.clip(values[r0:r1] * scale + np.float32(0.5), 0, HEATMAP_LEVELS - 1)
        out[r0:r1] = lut[idx.astype(np.intp)]
    return out
