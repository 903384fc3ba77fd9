"""Cleaning a lesion mask: holes filled, stray islands dropped.

A dermoscopy image in PH2 or HAM10000 shows one lesion; the ensemble mean thresholded at 0.5
sometimes adds small islands (hair, a dark corner of the dermoscope's ring) or leaves holes
(a regressed, pale centre). The usual remedies of the ISIC challenge entries:

    "fill"          holes (background not connected to the image border) become lesion
    "largest"       only the largest 8-connected component is kept
    "largest_fill"  both

They assume one lesion per image: an image with several lesions loses all but the biggest
under "largest". Measured on the val splits in MODEL_CARD.md (bench/postprocess_study.py).

segment(postprocess="auto") takes the model file's own setting (metadata "postprocess",
written where it was measured better; none: the published mask, untouched); None or
"none" turns it off, a method name forces it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

METHODS = ("fill", "largest", "largest_fill")
_EIGHT = np.ones((3, 3), dtype=bool)


def check_postprocess(method: str | None) -> None:
    if method is not None and method not in METHODS:
        raise ValueError(f"postprocess must be None or one of {METHODS}, got {method!r}")


def resolve_postprocess(value: str | None, model_default: str | None) -> str | None:
    """segment()'s `postprocess` argument -> the method to run (None: none)."""
    if value == "auto":
        return model_default
    if value is None or value == "none":
        return None
    if value not in METHODS:
        raise ValueError(f"postprocess must be 'auto', None / 'none' or one of {METHODS}, "
                         f"got {value!r}")
    return value


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask (ties: the first in raster order);
    an empty mask stays empty."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def postprocess_mask(mask: np.ndarray, method: str | None) -> np.ndarray:
    """`mask` (H, W) bool cleaned by `method` (see the module's docstring); None: a copy."""
    check_postprocess(method)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask is (H, W), got shape {mask.shape}")
    if method is None:
        return mask.copy()
    if method in ("largest", "largest_fill"):
        mask = largest_component(mask)
    if method in ("fill", "largest_fill"):
        # holes: 4-connected background regions that do not touch the border
        mask = ndimage.binary_fill_holes(mask)
    return mask


def postprocessed(result, method: str | None):
    """A SegmentationResult with its mask cleaned by `method` (resolved; None: unchanged)
    and the clean-up named in its `fusion`; the maps stay as the ensemble gave them. The
    one place every pipeline applies it. A label map of several classes (classes.py) is
    cleaned class by class, each class's region on its own, then labelled again."""
    if method is not None and getattr(result, "classes", None) is not None:
        from .classes import label_map
        regions = np.stack([postprocess_mask(r, method) for r in result.class_regions()])
        result.mask = label_map(regions, result.nested, result.probability)
        result.fusion += f"+{method}"
    elif method is not None:
        result.mask = postprocess_mask(result.mask, method)
        result.fusion += f"+{method}"
    return result
