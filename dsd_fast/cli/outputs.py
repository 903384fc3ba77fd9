"""The output side of `dsd-fast segment`: each image's files and record, the run's summaries.

    OUT/<key>_mask.png          0/255, at the original size (written last of the pictures)
    OUT/<key>_prob.png          foreground probability, 16-bit (0..65535 for 0..1)
    OUT/<key>_uncertainty.png   ensemble-std heatmap (visualise.heatmap)
    OUT/<key>_overlay.png       lesion contour on the image, uncertain band shaded
    OUT/results.json, results.csv, metrics.csv (with ground truth), index.html (report.py)
    OUT/.dsd-fast/claims/<key>.json the names about to be written, before the first of them
    OUT/.dsd-fast/done/<key>.json   the per-image record; written after all of the image's
                                    outputs, it is what makes an image "finished"
    OUT/.dsd-fast/lock          held by the run (two runs cannot share a folder), removed
                                    when it ends

Files the tool did not write are never replaced without --overwrite: an existing output
name is the tool's only if a claim or a record of this folder lists it (a user's own
`a_mask.png` beside `a.png` is not), and the run's summaries are the tool's only if the
folder already has its state folder.

Every file goes through io.atomic_write: a target is either absent or complete. An image
is finished only when its record exists, was made from the same input file (a record
names it), the record's outputs all exist and the input file's size and mtime are the
ones recorded.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..images import strip_rows
from ..io import csv_cell, write_png, write_text
from ..metrics import METRIC_KEYS, class_keys
from ..uncertainty import entropy_map
from .class_outputs import class_columns, class_suffix, image_record, write_class_outputs
from .discover import InputImage, Prepared, fingerprint, overlay_picture
from .errors import UsageError
from .evaluate import GroundTruth, write_csv
from .report import data_uri, render_report, thumbnail_size
from .visualise import heatmap_strips, overlay, overlay_inplace

OUTPUT_SUFFIXES = {"mask": "_mask.png", "probability": "_prob.png",
                   "uncertainty": "_uncertainty.png", "overlay": "_overlay.png",
                   "labels": "_labels.png"}     # a model of several classes: class_outputs.py
STATE_DIR = ".dsd-fast"
UNCERTAIN_ABOVE = 0.2          # std above which a pixel is in the shaded "uncertain band"


def output_paths(out: Path, key: str, kinds: Sequence[str]) -> dict[str, Path]:
    """{kind: OUT/<key><suffix>}; per-class kinds ("probability:cup") as class_outputs.py
    names them."""
    return {k: out / f"{key}{class_suffix(k) or OUTPUT_SUFFIXES[k]}" for k in kinds}


def record_path(out: Path, key: str) -> Path:
    return out / STATE_DIR / "done" / f"{key}.json"


def claim_path(out: Path, key: str) -> Path:
    return out / STATE_DIR / "claims" / f"{key}.json"


SUMMARY_FILES = ("results.json", "results.csv", "metrics.csv", "index.html")


def written_by_us(out: Path, key: str) -> set[str]:
    """Output names (relative to OUT) a claim or record of this folder says the tool wrote
    (or was about to write) for `key`."""
    names: set[str] = set()
    for p in (claim_path(out, key), record_path(out, key)):
        try:
            doc = json.loads(p.read_text())
            names.update(doc.get("outputs", {}).values())
        except (OSError, ValueError, AttributeError):
            continue
    return names


def foreign_outputs(out: Path, key: str, kinds: Sequence[str]) -> list[Path]:
    """Existing files at `key`'s output names that the tool did not write."""
    ours = written_by_us(out, key)
    return [p for p in output_paths(out, key, kinds).values()
            if (p.exists() or p.is_symlink()) and p.relative_to(out).as_posix() not in ours]


def foreign_summaries(out: Path) -> list[Path]:
    """Summary files in OUT that a run of the tool cannot have written (OUT has no state
    folder yet)."""
    if (out / STATE_DIR).is_dir():
        return []
    return [out / n for n in SUMMARY_FILES if (out / n).exists()]


class OutputLock:
    """An exclusive lock on OUT/.dsd-fast/lock for the run (released by the OS if the
    process dies). Where fcntl is missing (Windows) it does nothing.

    The lock file is removed when the run ends, while still held, so a run that could not
    start leaves nothing behind. A run that opened the file just before it was removed
    could then lock a file no longer in the folder; `acquire` checks that the file it
    locked is still the one at the path, and tries again if not."""

    def __init__(self, out: Path):
        self.path = out / STATE_DIR / "lock"
        self.fd = None

    def __enter__(self):
        return self if self.fd is not None else self.acquire()

    def acquire(self) -> "OutputLock":
        """Take the lock (UsageError if another run holds it; OSError if the folder cannot
        be written)."""
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise UsageError(f"another dsd-fast segment run is writing into "
                                 f"{self.path.parents[1]} (wait for it, or choose another -o)"
                                 ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)                     # removed by the run that held it: again

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------------- one image

def _maps_at(res, h: int, w: int, antialias: bool = False):
    """A result's probability and std bilinearly resized to (h, w) (the report's thumbnail):
    float32 arrays."""
    maps = torch.stack((torch.from_numpy(res.probability), torch.from_numpy(res.std)))[None]
    up = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False,
                       antialias=antialias)[0]
    return up[0].clamp_(0, 1).numpy(), up[1].clamp_min_(0).numpy()


def _thumbnail(rgb: np.ndarray | None, res, h: int, w: int) -> tuple[str, list[int]]:
    """The report's thumbnail: the overlay drawn at thumbnail size (so its contour stays
    visible), as a JPEG data URI."""
    from PIL import Image
    th, tw = thumbnail_size(h, w)
    if rgb is None:
        small = np.full((th, tw, 3), 40, np.uint8)
    else:
        # Subsample to <= 4x the thumbnail first (cheap on 64 MP), then filter down.
        sy, sx = max(1, h // (4 * th)), max(1, w // (4 * tw))
        pre = np.ascontiguousarray(rgb[::sy, ::sx])
        small = np.array(Image.fromarray(pre).resize((tw, th), Image.BOX))
    prob, std = _maps_at(res, th, tw, antialias=True)
    mask = F.interpolate(torch.from_numpy(res.mask).float()[None, None], size=(th, tw),
                         mode="bilinear", align_corners=False, antialias=True)[0, 0] > 0.5
    return data_uri(overlay(small, mask.numpy(), std)), [th, tw]


def write_outputs(prep: Prepared, res, opts, gt: GroundTruth | None,
                  settings: dict) -> tuple[dict, str | None]:
    """Write one image's outputs (mask last), then its record. Returns (record, scoring
    failure or None). `res` is the segmenter's result at the image's size (its mask fused,
    refined and cleaned up as `segment()` makes it)."""
    item, h, w, out = prep.item, prep.height, prep.width, opts.output
    paths = output_paths(out, item.key, opts.kinds())
    rel = {k: p.relative_to(out).as_posix() for k, p in paths.items()}
    write_text(claim_path(out, item.key), json.dumps({"key": item.key, "outputs": rel}))
    if getattr(res, "classes", None) is not None:          # several classes: a label map
        return write_class_outputs(prep, res, opts, gt, settings, paths,
                                   record_path(out, item.key), UNCERTAIN_ABOVE, _thumbnail)
    prob, std, mask = res.probability, res.std, res.mask
    n = h * w
    entropy_sum = 0.0
    for r0, r1 in strip_rows(h, w):
        entropy_sum += float(entropy_map(prob[r0:r1]).sum())
    stats = {"area_px": int(np.count_nonzero(mask)), "area_fraction": 0.0,
             "mean_uncertainty": float(std.mean(dtype=np.float64)),
             "mean_entropy": entropy_sum / n}
    stats["area_fraction"] = stats["area_px"] / n
    band = std > UNCERTAIN_ABOVE
    stats["uncertain_fraction"] = int(np.count_nonzero(band)) / n
    if opts.maps:
        p16 = np.empty((h, w), np.uint16)
        for r0, r1 in strip_rows(h, w):
            p16[r0:r1] = (prob[r0:r1] * 65535 + 0.5).astype(np.uint16)
        write_png(paths["probability"], p16)
        del p16
        write_png(paths["uncertainty"], heatmap_strips(std, vmax=0.5))
    del prob, std
    thumb, thumb_size = "", [0, 0]
    if opts.overlay or opts.report:
        rgb = overlay_picture(prep)
        thumb, thumb_size = _thumbnail(rgb, res, h, w)
        if opts.overlay:
            write_png(paths["overlay"], overlay_inplace(rgb, mask, band))
        del rgb
    del band
    write_png(paths["mask"], mask.astype(np.uint8) * 255, compress_level=6)
    metrics, score_error = None, None
    if gt is not None:
        try:
            metrics = gt.score(item, mask)
        except ValueError as e:
            score_error = str(e)
    record = image_record(prep, stats, rel, settings, thumb, thumb_size,
                          getattr(res, "zoom", None))
    write_text(record_path(out, item.key), json.dumps(record))
    record["metrics"] = metrics
    return record, score_error


def read_record(out: Path, key: str) -> dict | None:
    """The record of `key` in OUT, finished or not, or None when there is none readable."""
    try:
        rec = json.loads(record_path(out, key).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def other_input(rec: dict | None, item: InputImage) -> str | None:
    """The input a record was made from when that is not `item`'s file, else None. Two
    inputs get one output name when they come from different runs (camera folders reuse
    IMG_0001.JPG); records from before inputs were stored count as the item's own."""
    recorded = (rec or {}).get("input")
    if recorded is None or recorded == str(item.path.resolve()):
        return None
    return str(recorded)


def finished_record(item: InputImage, opts) -> dict | None:
    """The item's record if it is finished for these options, else None."""
    rec = read_record(opts.output, item.key)
    if rec is None or other_input(rec, item) is not None:
        return None
    try:
        if rec.get("input_fingerprint") != fingerprint(item.path):
            return None
    except OSError:
        return None
    paths = output_paths(opts.output, item.key, opts.kinds())
    if not all(p.is_file() for p in paths.values()):
        return None
    rec["outputs"] = {k: p.relative_to(opts.output).as_posix() for k, p in paths.items()}
    return rec


def still_valid(rec: dict, out: Path) -> bool:
    """A record from an earlier run still describes the folder: its input file is unchanged
    and every output it lists exists."""
    try:
        if rec.get("input_fingerprint") != fingerprint(Path(rec["input"])):
            return False
        return all((out / name).is_file() for name in rec["outputs"].values())
    except (OSError, KeyError, TypeError, AttributeError):
        return False


def earlier_records(out: Path, skip: set[str]) -> list[dict]:
    """The folder's still-valid records whose keys are not in `skip` (an earlier run's
    images, other than this run's inputs), ordered by key."""
    done = out / STATE_DIR / "done"
    found = []
    for p in sorted(done.rglob("*.json")) if done.is_dir() else ():
        key = p.relative_to(done).with_suffix("").as_posix()
        if key in skip:
            continue
        rec = read_record(out, key)
        if rec is not None and rec.get("key") == key and still_valid(rec, out):
            found.append(rec)
    return found


# ----------------------------------------------------------------------------- summaries

RESULT_COLUMNS = ("image", "input", "status", "width", "height", "model_input", "area_px",
                  "area_fraction", "mean_uncertainty", "mean_entropy", "uncertain_fraction")


def _json_safe(x):
    """Non-finite floats become null (JSON has no inf/nan; browsers reject them)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_summaries(out: Path, records: list[dict], failures: list[tuple[str, str]],
                    info: dict, report: bool) -> None:
    """results.json, results.csv, metrics.csv (when scored) and index.html, atomically."""
    public = [{k: v for k, v in r.items() if k not in ("thumbnail", "thumbnail_size",
                                                        "input_fingerprint", "settings")}
              for r in records]
    scored = [r for r in records if r.get("metrics") is not None]
    doc = {"tool": "dsd-fast segment", "settings": info["settings"], "counts": info["counts"],
           "images": public,
           "failed": [{"input": n, "error": why} for n, why in failures]}
    if info.get("summary") is not None:
        doc["metrics_summary"] = info["summary"]
    write_text(out / "results.json", json.dumps(_json_safe(doc), indent=1) + "\n")

    classes = info.get("classes")             # several classes: per-class columns as well
    columns = RESULT_COLUMNS + (class_columns(classes) if classes else ()) \
        + (METRIC_KEYS + (class_keys(classes) if classes else ()) if scored else ())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        per_class = {f"{k}_{c}": v for c, stats in (r.get("classes") or {}).items()
                     for k, v in stats.items()}
        row = {**r, **per_class, **(r.get("metrics") or {}), "image": r["key"]}
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else csv_cell(v)
                         for v in (row.get(c, "") for c in columns)])
    write_text(out / "results.csv", buf.getvalue())
    if scored:
        write_csv([{"image": r["key"], **r["metrics"]} for r in scored], out / "metrics.csv",
                  info.get("classes"))
    if report:
        write_text(out / "index.html", render_report(records, failures, info))
