"""Volumes on the command line: `dsd-fast segment CASES/ -o OUT --checkpoint brats.pt`.

discover.py finds, beside images, NIfTI files (.nii, .nii.gz), BraTS case folders (a
folder holding *_t1, *_t1ce, *_t2 and *_flair NIfTI files) and DICOM series folders (a
folder of DICOM files); a DICOM file named on the command line is a volume too (one slice,
or a multi-frame file's frames). The segment loop (worker.process) hands each of them here,
where it is segmented slice by slice (dsd_fast.volumes.segment_volume, the same loop and
noise keys as the API) and written as

    OUT/<key>_mask.nii.gz, _prob.nii.gz, _uncertainty.nii.gz   (the input's affine, header)

with a record in OUT/.dsd-fast/done/<key>.json like an image's (kind "volume": shape,
spacing, volume in mL, mean uncertainty), so results.json lists it and a re-run skips it.
Scored (HD95 in mm, Dice, volumes in mL) against `--gt DIR/<key>.nii[.gz]` (or
`<key>_seg.nii[.gz]`), else against a BraTS case's own *_seg file.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..channels import is_channel_folder
from ..images import ImageInputError
from ..io import write_text
from ..volumes.reader import is_dicom_file, is_nifti
from .discover import InputImage, fingerprint
from .outputs import claim_path, read_record, record_path

GT_SUFFIXES = (".nii.gz", ".nii", "_seg.nii.gz", "_seg.nii")
VOLUME_COLUMNS = ("volume_ml", "gt_volume_ml", "volume_difference_ml")


def is_volume_input(item: InputImage) -> bool:
    """A NIfTI or DICOM file or a volume folder; a channel folder is one 2-D image."""
    if item.path.is_dir():
        return not is_channel_folder(item.path)
    return is_nifti(item.path.name) or is_dicom_file(item.path)


def volume_paths(out: Path, key: str) -> dict[str, Path]:
    from ..volumes.writer import output_paths
    key_path = Path(key)
    return output_paths(out / key_path.parent, key_path.name)


def finished_volume_record(item: InputImage, opts) -> dict | None:
    """The volume's record if it is finished (same input, unchanged, outputs present)."""
    rec = read_record(opts.output, item.key)
    if rec is None or rec.get("input") != str(item.path.resolve()):
        return None
    try:
        if rec.get("input_fingerprint") != fingerprint(item.path):
            return None
    except OSError:
        return None
    outputs = rec.get("outputs") or {}
    if not outputs or not all((opts.output / n).is_file() for n in outputs.values()):
        return None
    return rec


def segment_volume_input(state, item: InputImage, pipe, seg, axis: int | None = None) -> None:
    """Segment one volume input along voxel `axis` (None: segment_volume's default) and
    write its outputs and record into the run's state (state.done / state.failures;
    nothing raised for a bad volume)."""
    from ..io import WriteError
    from ..volumes import read_volume, segment_volume, write_volume_outputs
    out = state.opts.output
    try:
        volume = read_volume(item.path)
        volume.name = Path(item.key).name          # noise keys and names by the output key
        res = segment_volume(pipe, volume, axis=axis, options=seg)
    except (ImageInputError, ImportError, ValueError) as e:
        state.fail(item.path, str(e))
        return
    except FloatingPointError as e:
        state.fail(item.path, f"the sampler failed: {e}")
        return
    except (MemoryError, RuntimeError) as e:
        text = str(e).lower()
        if not isinstance(e, MemoryError) and "out of memory" not in text \
                and "can't allocate memory" not in text:
            raise
        state.fail(item.path, f"out of memory in the network at {seg.batch_size} slices a "
                   "batch (try a smaller --batch-size)")
        return
    paths = volume_paths(out, item.key)
    rel = {k: p.relative_to(out).as_posix() for k, p in paths.items()}
    try:
        write_text(claim_path(out, item.key), json.dumps({"key": item.key, "outputs": rel}))
        write_volume_outputs(res, paths["mask"].parent, Path(item.key).name)
    except (WriteError, ValueError) as e:
        state.fail(item.path, str(e))
        return
    metrics, score_error = _score(state, item, res)
    voxels = int(np.count_nonzero(res.mask))
    k, plane = _shown_slice(res)
    thumb, thumb_size = ("", [0, 0])
    if state.opts.report:
        thumb, thumb_size = _slice_thumbnail(volume, res, k)
    record = {"key": item.key, "input": str(item.path.resolve()), "kind": "volume",
              "shape": list(res.mask.shape), "spacing_mm": list(res.spacing),
              "axis": res.axis, "intensity": res.intensity,
              # the report's card: the slice plane's size and the slice it shows
              "height": plane[0], "width": plane[1], "shown_slice": k,
              "area_px": voxels, "area_fraction": voxels / res.mask.size,
              "volume_ml": voxels * float(np.prod(res.spacing)) / 1000.0,
              "mean_uncertainty": float(res.std.mean(dtype=np.float64)),
              "outputs": rel, "input_fingerprint": fingerprint(item.path),
              "settings": state.settings, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "thumbnail": thumb, "thumbnail_size": thumb_size}
    write_text(record_path(out, item.key), json.dumps(record))
    record["metrics"] = metrics
    record["status"] = "segmented"
    state.done[item.key] = record
    state.segmented += 1
    if score_error:
        state.fail(item.path, score_error)


def _shown_slice(res) -> tuple[int, tuple[int, int]]:
    """The slice with the most mask (the middle one where the mask is empty) along the
    run's axis, and the (H, W) of a slice."""
    per = np.moveaxis(res.mask, res.axis, 0).reshape(res.mask.shape[res.axis], -1).sum(1)
    k = int(per.argmax()) if per.any() else len(per) // 2
    plane = tuple(int(n) for a, n in enumerate(res.mask.shape) if a != res.axis)
    return k, plane


def _slice_thumbnail(volume, res, k: int) -> tuple[str, list[int]]:
    """The report's picture of a volume: slice k's first channel (scaled over the volume)
    with the mask's contour and the uncertain band, as an image's overlay."""
    from types import SimpleNamespace

    from .outputs import _thumbnail
    take = lambda a: np.ascontiguousarray(np.take(a, k, axis=res.axis))
    ch = volume.data[..., 0]
    lo, hi = float(ch.min()), float(ch.max())
    gray = (np.clip((take(ch) - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)
    std, prob = take(res.std), take(res.probability)
    if std.ndim == 3:                   # several classes (H, W, K): any class, its most uncertain
        std, prob = std.max(axis=-1), prob.max(axis=-1)
    picture = SimpleNamespace(mask=take(res.mask) > 0, std=std, probability=prob)
    return _thumbnail(np.repeat(gray[..., None], 3, axis=2), picture, *gray.shape)


def _score(state, item: InputImage, res) -> tuple[dict | None, str | None]:
    from ..volumes import read_volume, score_volume
    gt_mask = res.label
    if state.gt is not None:
        folder = state.gt.folder / item.rel_dir
        name = Path(item.key).name
        found = [folder / f"{name}{s}" for s in GT_SUFFIXES if (folder / f"{name}{s}").is_file()]
        if not found:
            return None, (f"{item.path}: no ground truth {name}.nii.gz / {name}_seg.nii.gz "
                          f"in {folder}")
        try:
            gt_mask = read_volume(found[0]).data[..., 0] > 0
        except ImageInputError as e:
            return None, str(e)
    if gt_mask is None:
        return None, None
    if res.probability.ndim == 4:       # a label map of several classes
        return None, (f"{item.path}: volumes of a model of several classes are not scored "
                      "yet (score each class's mask with dsd_fast.volumes.score_volume)"
                      if state.gt is not None else None)
    try:
        return score_volume(res.mask, gt_mask, res.spacing), None
    except ValueError as e:
        return None, f"{item.path}: {e}"


def eval_volumes(args) -> int:
    """`dsd-fast eval --pred DIR --gt DIR` where DIR holds NIfTI predictions: scored with
    their voxel spacing (dsd_fast.volumes.score.evaluate_volume_folders), metrics.csv with
    one row per volume, hd95 in mm."""
    import csv
    import io

    from ..io import csv_cell
    from ..metrics import METRIC_KEYS
    from ..volumes.score import evaluate_volume_folders
    from .evaluate import format_summary
    rows, summary = evaluate_volume_folders(args.pred, args.gt)
    out = Path(args.out) if args.out else Path.cwd()
    columns = ("image", *METRIC_KEYS, *VOLUME_COLUMNS)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.6f}" if isinstance(r[k], float) else csv_cell(r[k]))
                         for k in columns})
    path = write_text(out / "metrics.csv", buf.getvalue())
    print(format_summary(summary, len(rows)))
    print(f"per-volume metrics: {path} (hd95 in mm)")
    return 0


def has_volume_predictions(folder) -> bool:
    from ..volumes.score import volume_predictions
    return Path(folder).is_dir() and bool(volume_predictions(folder))
