"""The output side of `dsd-fast segment` for a model of several classes (classes.py): what
outputs.py writes for a binary model, per class.

    OUT/<key>_labels.png                uint8 label map, 0 background, k = the k-th class
                                        (written last of the pictures: it makes the image's
                                        outputs complete, as <key>_mask.png does for one class)
    OUT/<key>_prob_<class>.png          each class's probability, 16-bit (0..65535 for 0..1)
    OUT/<key>_uncertainty_<class>.png   each class's ensemble-std heatmap
    OUT/<key>_overlay.png               each class's region outlined in its own colour
                                        (CLASS_COLOURS, in class order), the band where any
                                        class is uncertain shaded
The record gets "classes": {name: area_px, area_fraction, mean_uncertainty, mean_entropy}
per class; its top-level area is the labelled region (label > 0), its mean uncertainty and
entropy the means over classes, and with --gt its metrics are metrics.score_classes'.
"""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np

from ..images import strip_rows
from ..io import write_png, write_text
from ..uncertainty import entropy_map
from ..zoom import zoom_record
from .discover import overlay_picture
from .visualise import contour, heatmap_strips, overlay_inplace

# Outline colours of classes 1, 2, ... (cycled): cyan, magenta, blue, white, ... stand out
# on fundus and skin tones and differ from the uncertain band's amber (visualise.py).
CLASS_COLOURS = ((0, 220, 255), (255, 0, 200), (60, 90, 255), (255, 255, 255),
                 (150, 255, 60), (255, 120, 0))
PROB_PREFIX, UNCERTAINTY_PREFIX = "_prob_", "_uncertainty_"


def class_kinds(classes, maps: bool, overlay: bool) -> list[str]:
    """The output kinds of an image of these classes, the label map last (written last)."""
    per = ([f"probability:{c}" for c in classes] + [f"uncertainty:{c}" for c in classes]
           if maps else [])
    return per + (["overlay"] if overlay else []) + ["labels"]


CLASS_STATS = ("area_px", "area_fraction", "mean_uncertainty", "mean_entropy")


def class_columns(classes) -> tuple[str, ...]:
    """results.csv's per-class columns: each CLASS_STATS entry as <stat>_<class>."""
    return tuple(f"{k}_{c}" for c in classes for k in CLASS_STATS)


def class_suffix(kind: str) -> str | None:
    """The file-name suffix of a per-class kind ("probability:cup" -> "_prob_cup.png"),
    None for other kinds."""
    what, sep, name = kind.partition(":")
    if not sep:
        return None
    return f"{PROB_PREFIX if what == 'probability' else UNCERTAINTY_PREFIX}{name}.png"


def class_stats(res) -> tuple[dict, dict]:
    """(the record's top-level stats, {class: stats}) of a result of several classes."""
    h, w = res.mask.shape
    n = h * w
    regions = res.class_regions()
    per = {}
    for c, name in enumerate(res.classes):
        area = int(np.count_nonzero(regions[c]))
        per[name] = {"area_px": area, "area_fraction": area / n,
                     "mean_uncertainty": float(res.std[c].mean(dtype=np.float64)),
                     "mean_entropy": _mean_entropy(res.probability[c])}
    area = int(np.count_nonzero(res.mask))
    top = {"area_px": area, "area_fraction": area / n,
           "mean_uncertainty": float(np.mean([p["mean_uncertainty"] for p in per.values()])),
           "mean_entropy": float(np.mean([p["mean_entropy"] for p in per.values()]))}
    return top, per


def _mean_entropy(prob: np.ndarray) -> float:
    h, w = prob.shape
    total = 0.0
    for r0, r1 in strip_rows(h, w):
        total += float(entropy_map(prob[r0:r1]).sum())
    return total / (h * w)


def write_class_outputs(prep, res, opts, gt, settings, paths: dict, record_file,
                        uncertain_above: float, thumbnail) -> tuple[dict, str | None]:
    """Write one image's outputs `paths` (label map last), then its record at `record_file`;
    return (record, scoring failure or None). outputs.write_outputs calls this after its
    claim for a result of several classes; `thumbnail(rgb, view, h, w)` draws the report's."""
    item, h, w, out = prep.item, prep.height, prep.width, opts.output
    rel = {k: p.relative_to(out).as_posix() for k, p in paths.items()}
    top, per = class_stats(res)
    band = (res.std > uncertain_above).any(axis=0)
    top["uncertain_fraction"] = int(np.count_nonzero(band)) / (h * w)
    if opts.maps:
        for c, name in enumerate(res.classes):
            p16 = np.empty((h, w), np.uint16)
            for r0, r1 in strip_rows(h, w):
                p16[r0:r1] = (res.probability[c, r0:r1] * 65535 + 0.5).astype(np.uint16)
            write_png(paths[f"probability:{name}"], p16)
            write_png(paths[f"uncertainty:{name}"], heatmap_strips(res.std[c], vmax=0.5))
    thumb, thumb_size = "", [0, 0]
    if opts.overlay or opts.report:
        rgb = overlay_picture(prep)
        # the report's thumbnail: the labelled region and the largest class spread
        view = SimpleNamespace(mask=res.mask > 0, probability=res.probability.max(axis=0),
                               std=res.std.max(axis=0))
        thumb, thumb_size = thumbnail(rgb, view, h, w)
        if opts.overlay:
            write_png(paths["overlay"], class_overlay(rgb, res.class_regions(), band))
        del rgb
    write_png(paths["labels"], np.ascontiguousarray(res.mask, dtype=np.uint8),
              compress_level=6)
    metrics, score_error = None, None
    if gt is not None:
        try:
            metrics = gt.score_labels(item, res.mask, res.classes, res.nested)
        except ValueError as e:
            score_error = str(e)
    record = image_record(prep, {**top, "classes": per}, rel, settings, thumb, thumb_size,
                          getattr(res, "zoom", None))
    write_text(record_file, json.dumps(record))
    record["metrics"] = metrics
    return record, score_error


def class_overlay(rgb: np.ndarray, regions: np.ndarray, band: np.ndarray) -> np.ndarray:
    """`rgb` (H, W, 3) uint8 with the uncertain band shaded (as the binary overlay) and each
    class's region outlined in its CLASS_COLOURS colour, inner classes drawn last."""
    overlay_inplace(rgb, np.zeros(band.shape, bool), band)     # the band's shading only
    thickness = max(1, round(max(band.shape) / 200))
    for c, region in enumerate(regions):
        rgb[contour(region, thickness=thickness)] = CLASS_COLOURS[c % len(CLASS_COLOURS)]
    return rgb


def image_record(prep, stats: dict, rel: dict, settings: dict, thumb: str,
                 thumb_size, zoom: dict | None = None) -> dict:
    """One finished image's record in results.json (binary and several-class models alike):
    what it was, `stats` (areas, uncertainty), its outputs and the run's settings; under
    crop="zoom" the result's `zoom` (zoom.zoom_record: the finest box, what its pass saw)."""
    item = prep.item
    record = {"key": item.key, "input": str(item.path.resolve()), "width": prep.width,
              "height": prep.height,
              "model_input": ("full" if prep.downscaled is None
                              else f"downscaled from {prep.downscaled[1]}x{prep.downscaled[0]}"),
              # an animated / multi-page file: its frame count (the first frame was used)
              **({"frames": prep.frames} if getattr(prep, "frames", 1) > 1 else {}),
              **stats,
              "outputs": rel, "input_fingerprint": prep.fingerprint, "settings": settings,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "thumbnail": thumb, "thumbnail_size": thumb_size}
    if zoom is not None:
        record.update(zoom_record(zoom, record["model_input"]))
    return record
