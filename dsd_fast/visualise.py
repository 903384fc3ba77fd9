"""Pictures people look at: the lesion contour over the image, and an uncertainty heatmap."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

CONTOUR_RGB = (0, 255, 0)
UNCERTAIN_RGB = (255, 200, 0)


def contour(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """(H, W) bool -> (H, W) bool band just inside the mask's boundary."""
    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def to_uint8_rgb(image) -> np.ndarray:
    """(3, H, W) float tensor/array in [0, 1] or (H, W, 3) uint8 -> (H, W, 3) uint8."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[2] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    return arr


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
