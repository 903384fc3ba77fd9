"""Scoring predicted masks against ground truth: folders in, a per-image CSV and a summary
out (`dsd-fast eval`), and the ground truth of `dsd-fast segment --gt` (GroundTruth).

Several classes (classes.py): predictions are label maps (`<stem>_labels.png`), ground truth
a label map `<stem>.png` or one mask per class `<stem>_<class>.png` (Drishti-GS's layout,
soft maps at > 127); each class is scored on its region, and the image's metrics are the
means over classes (metrics.score_classes)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..images import IMAGE_SUFFIXES, ImageInputError, list_images, load_mask
from ..io import csv_cell, write_text
from ..classes import class_regions, load_class_mask, load_label_map, truth_regions
from ..metrics import (METRIC_KEYS, class_keys, score_classes, score_image, summarise,
                       summarise_classes)
from .discover import InputImage
from .errors import UsageError

CSV_COLUMNS = ("image",) + METRIC_KEYS
PRED_SUFFIX = "_mask"           # `dsd-fast segment` writes <stem>_mask.png


def _pred_stem(stem: str) -> str:
    return stem[:-len(PRED_SUFFIX)] if stem.endswith(PRED_SUFFIX) else stem


def match_predictions(pred_dir, gt_dir) -> list[tuple[str, Path, Path]]:
    """(stem, prediction, ground truth) for every prediction; `<stem>_mask.png` or
    `<stem>.png` predictions are matched to `<stem>.*` ground truth."""
    found = list_images(Path(pred_dir))
    # A `dsd-fast segment` folder also holds _prob/_uncertainty/_overlay pictures: when any
    # <stem>_mask file is there, only those are predictions.
    if any(stem.endswith(PRED_SUFFIX) for stem in found):
        found = {k: v for k, v in found.items() if k.endswith(PRED_SUFFIX)}
    preds = {}
    for stem, path in found.items():
        key = _pred_stem(stem)
        if key in preds:
            raise ValueError(f"two predictions for {key!r}: {preds[key].name} and {path.name}")
        preds[key] = path
    gts = list_images(Path(gt_dir))
    if not preds:
        raise ValueError(f"no predicted masks in {pred_dir}")
    missing = sorted(set(preds) - set(gts))
    if missing:
        raise ValueError(f"no ground truth in {gt_dir} for predictions {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (matched by file stem)")
    return [(k, preds[k], gts[k]) for k in sorted(preds)]


def score_pair(pred: np.ndarray, gt: np.ndarray, name: str) -> dict:
    if pred.shape != gt.shape:
        raise ValueError(f"{name}: prediction size {pred.shape} differs from ground truth "
                         f"size {gt.shape}; predictions must be at the original size")
    return {"image": name, **score_image(pred, gt)}


def evaluate_folders(pred_dir, gt_dir) -> tuple[list[dict], dict]:
    rows = [score_pair(load_mask(p).numpy(), load_mask(g).numpy(), stem)
            for stem, p, g in match_predictions(pred_dir, gt_dir)]
    return rows, summarise(rows)


def write_csv(rows: list[dict], path, classes=None) -> Path:
    """Per-image metrics CSV (CSV_COLUMNS, then each class's metrics when `classes`),
    written atomically."""
    path = Path(path)
    columns = CSV_COLUMNS + (class_keys(classes) if classes else ())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.6f}" if isinstance(r[k], float) else csv_cell(r[k]))
                         for k in columns})
    return write_text(path, buf.getvalue())


LABELS_SUFFIX = "_labels"       # `dsd-fast segment` writes <stem>_labels.png for K > 1


def evaluate_class_folders(pred_dir, gt_dir, classes, nested: bool = True
                           ) -> tuple[list[dict], dict]:
    """`dsd-fast eval --classes`: label-map predictions (<stem>_labels.png or <stem>.png)
    against label maps <stem>.png or per-class masks <stem>_<class>.png. Rows are
    metrics.score_classes'; the summary is the mean over classes' with "classes": each
    class's own summary."""
    found = list_images(Path(pred_dir))
    if any(s.endswith(LABELS_SUFFIX) for s in found):
        found = {s[:-len(LABELS_SUFFIX)]: p for s, p in found.items()
                 if s.endswith(LABELS_SUFFIX)}
    if not found:
        raise ValueError(f"no predicted label maps in {pred_dir}")
    gt = GroundTruth(gt_dir)
    rows = []
    for stem in sorted(found):
        labels = load_label_map(found[stem], len(classes))
        truth = gt.class_truth("", stem, classes, nested)
        if truth is None:
            raise ValueError(f"no ground truth in {gt_dir} for prediction {stem!r}: neither "
                             f"a label map {stem}.png nor "
                             f"{', '.join(f'{stem}_{c}.png' for c in classes)}")
        rows.append({"image": stem, **_score_labels(labels, truth, classes, nested, stem)})
    summary = summarise(rows)
    summary["classes"] = summarise_classes(rows, classes)
    return rows, summary


def _score_labels(labels, truth, classes, nested, name) -> dict:
    if labels.shape != truth.shape[1:]:
        raise ValueError(f"{name}: prediction size {labels.shape} differs from ground truth "
                         f"size {truth.shape[1:]}; predictions must be at the original size")
    return score_classes(class_regions(labels, len(classes), nested), truth, classes)


def format_summary(summary: dict, n: int) -> str:
    lines = [f"{n} images; per-image mean +- std (pooled over all pixels where given)",
             f"{'metric':<18}{'mean':>10}{'std':>10}{'pooled':>10}"]
    for k in METRIC_KEYS:
        mean, std = summary[f"{k}_mean"], summary[f"{k}_std"]
        if k == "hd95" and summary.get("hd95_n_inf"):
            mean, std = summary["hd95_finite_mean"], summary["hd95_finite_std"]
            k = f"hd95 ({summary['hd95_n_inf']} inf)"
        pooled = summary.get(f"pooled_{k}")
        pooled_s = f"{pooled:>10.4f}" if pooled is not None else f"{'':>10}"
        lines.append(f"{k:<18}{mean:>10.4f}{std:>10.4f}{pooled_s}")
    return "\n".join(lines)


class GroundTruth:
    """Ground-truth masks in a folder, found for an input at GT/<rel_dir>/<stem>.* (mirrored
    layout) or else GT/<stem>.* (flat, as `dsd-fast eval` expects)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UsageError(f"--gt {folder}: no such folder")
        self._listings: dict[Path, dict[str, Path]] = {}     # subfolder -> {NFC stem: file}
        try:
            self.flat = list_images(self.folder)
        except ValueError as e:
            raise UsageError(f"--gt: {e}") from None

    def find(self, item: InputImage) -> Path | None:
        return self.find_stem(item.rel_dir, item.stem)

    def find_stem(self, rel_dir: str, stem: str) -> Path | None:
        """GT/<rel_dir>/<stem>.* (mirrored layout), else GT/<stem>.*, else None."""
        if rel_dir:
            sub = self.folder / rel_dir
            for suffix in sorted(IMAGE_SUFFIXES):
                for cand in (sub / f"{stem}{suffix}", sub / f"{stem}{suffix.upper()}"):
                    if cand.is_file():
                        return cand
            # the same name spelled otherwise in Unicode (macOS writes NFD): by NFC stem
            if sub not in self._listings:
                self._listings[sub] = list_images(sub) if sub.is_dir() else {}
            if stem in self._listings[sub]:
                return self._listings[sub][stem]
        return self.flat.get(stem)

    def class_truth(self, rel_dir: str, stem: str, classes, nested: bool):
        """(K, H, W) bool ground-truth regions of an image of several classes: from one mask
        per class <stem>_<class>.* when all are there, else from a label map <stem>.*;
        None when neither is. ValueError for an unreadable or wrong file."""
        per_class = [self.find_stem(rel_dir, f"{stem}_{c}") for c in classes]
        try:
            if all(p is not None for p in per_class):
                masks = [load_class_mask(p).numpy() for p in per_class]
                if len({m.shape for m in masks}) > 1:
                    raise ValueError(f"{stem}: its class masks differ in size")
                return truth_regions(np.stack(masks), nested)
            path = self.find_stem(rel_dir, stem)
            if path is None:
                return None
            return class_regions(load_label_map(path, len(classes)), len(classes), nested)
        except ImageInputError as e:
            raise ValueError(f"{stem}: ground truth {e}") from None

    def score_labels(self, item: InputImage, labels: np.ndarray, classes,
                     nested: bool) -> dict:
        """metrics.score_classes of a label map against the item's ground truth."""
        truth = self.class_truth(item.rel_dir, item.stem, classes, nested)
        if truth is None:
            raise ValueError(f"{item.path}: no ground truth in {self.folder}: neither a label "
                             f"map with stem {item.stem!r} nor one mask per class "
                             f"({', '.join(f'{item.stem}_{c}' for c in classes)})")
        return _score_labels(labels, truth, classes, nested, item.key)

    def score(self, item: InputImage, mask: np.ndarray) -> dict:
        """score_image metrics of `mask` against the item's ground truth; ValueError names
        the image when there is none or the sizes differ."""
        path = self.find(item)
        if path is None:
            raise ValueError(f"{item.path}: no ground-truth mask with stem {item.stem!r} "
                             f"in {self.folder}")
        try:
            gt = load_mask(path).numpy()
        except ImageInputError as e:
            raise ValueError(f"{item.path}: ground truth {e}") from None
        row = score_pair(mask, gt, item.key)
        return {k: v for k, v in row.items() if k != "image"}
