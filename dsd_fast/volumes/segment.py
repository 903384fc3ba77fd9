"""Segmenting a volume slice by slice with any segmenter, and the volume it gives back.

    result = segment_volume(pipe, "BraTS20_Training_001/")     # or a .nii.gz, a DICOM
    result.mask          # (X, Y, Z) uint8 in the input's voxel order
    write_volume_outputs(result, "out/")                       # writer.py

Each slice along `axis` (default: the last voxel axis, the official BraTS loader's
`[..., k]`) is one (C, H, W) image, H and W being the two other axes in their order; it goes
through the segmenter's own view and its one batched loop (`Segmenter.segment_views`), with
the noise key f"{case}:{axis}:{index}", so a slice's mask does not depend on which slices
share its batch. The per-slice results are stacked back at their index along `axis`.

Intensities ("intensity"):
    "raw"     the volume's values as they are: the official BraTS loader feeds raw MRI
              intensities (no normalisation), so a BraTS case folder gets this;
    "volume"  each channel scaled by the min and max of the whole volume to [0, 1] (not per
              slice: a slice keeps its brightness relative to the volume); NIfTI and DICOM
              files get this.
    "auto"    "raw" for a BraTS case folder, "volume" otherwise.
The segmenter's view then does what the model's own preprocessing does (DermoSegDiff:
per-slice min-max; official MedSegDiff: nothing beyond the resize).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..channels import ChannelNote, match_channels
from ..images import ImageInputError
from ..options import SegmentOptions
from .load import read_volume
from .reader import Volume

INTENSITIES = ("auto", "raw", "volume")
CHUNK_BATCHES = 8        # views made at a time: 8 network batches (memory, not results)


@dataclass
class VolumeResult:
    """A segmented volume, in the input's voxel order (X, Y, Z).

    mask: uint8 {0, 1} (a label map for a model of several classes); probability, std:
    float32 in [0, 1] (the ensemble's mean and per-voxel std, as SegmentationResult's per
    slice), (X, Y, Z, K) for K classes; affine (4, 4), header (NIfTI, or None
    for DICOM) and spacing (mm along i, j, k) of the input; axis: the slice axis used;
    label: the input's ground truth where it had one (a BraTS seg > 0); case: its name.
    """
    mask: np.ndarray
    probability: np.ndarray
    std: np.ndarray
    affine: np.ndarray
    header: object
    spacing: tuple
    axis: int
    case: str
    intensity: str
    options: SegmentOptions
    label: np.ndarray | None = None
    source: str = ""

    def score(self, gt=None) -> dict:
        """Dice, HD95 in mm and volumes in mL against `gt` (X, Y, Z) or the input's label."""
        from .score import score_volume
        gt = self.label if gt is None else gt
        if gt is None:
            raise ValueError(f"{self.case}: no ground truth to score against")
        return score_volume(self.mask, gt, self.spacing)


def scaled(volume: Volume, intensity: str) -> np.ndarray:
    """(X, Y, Z, C) float32 under `intensity` ("raw" or "volume"; module docstring)."""
    if intensity == "raw":
        return volume.data
    data = volume.data
    lo = data.min(axis=(0, 1, 2), keepdims=True)
    hi = data.max(axis=(0, 1, 2), keepdims=True)
    # a constant channel maps to zeros, as preprocess.minmax_normalise does
    return ((data - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)


def slice_image(data: np.ndarray, axis: int, index: int) -> torch.Tensor:
    """(X, Y, Z, C) -> slice `index` along spatial `axis` as a (C, H, W) tensor, (H, W)
    the two other axes in order."""
    return torch.from_numpy(np.ascontiguousarray(
        np.moveaxis(np.take(data, index, axis=axis), -1, 0)))


def segment_volume(segmenter, source, axis: int | None = None,
                   options: SegmentOptions | None = None, batch_slices: int | None = None,
                   progress: bool = False, intensity: str = "auto",
                   **changes) -> VolumeResult:
    """Segment a volume slice by slice (module docstring).

    segmenter: from `dsd_fast.load` (its `channels` must match the volume's, or be 1 -> 3).
    source: a path (NIfTI, DICOM file or series folder, BraTS case folder) or a Volume.
    axis: 0, 1 or 2 (or -1..-3); None: the last voxel axis.
    batch_slices: slices per network batch (SegmentOptions.batch_size; each brings
        `ensemble` chains); None: the options' batch_size.
    intensity: "auto", "raw" or "volume" (module docstring).
    options / changes: SegmentOptions fields, as `segment()`.
    Returns a VolumeResult in the input's voxel order.
    """
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be one of {INTENSITIES}, got {intensity!r}")
    axis = _check_axis(axis)
    volume = source if isinstance(source, Volume) else read_volume(source)
    if intensity == "auto":
        intensity = "raw" if volume.kind == "brats" else "volume"
    if batch_slices is not None:
        changes["batch_size"] = batch_slices
    opts = segmenter.resolve(options, **changes)
    data = _model_channels(scaled(volume, intensity), segmenter.channels, volume, intensity)
    n = data.shape[axis]
    keys = [f"{volume.name}:{axis}:{k}" for k in range(n)]
    results = []
    chunk = opts.batch_size * CHUNK_BATCHES
    bar = _bar(n, progress, volume.name)
    for start in range(0, n, chunk):
        chws = [slice_image(data, axis, k) for k in range(start, min(n, start + chunk))]
        results += segmenter.segment_views(
            [segmenter.view(c, opts) for c in chws], [tuple(c.shape[1:]) for c in chws],
            keys[start:start + chunk], opts,
            images=chws if opts.refine is not None or opts.crop == "zoom" else None)
        if bar is not None:
            bar.update(len(chws))
    if bar is not None:
        bar.close()
    return VolumeResult(
        mask=_stack([r.mask for r in results], axis, np.uint8),
        probability=_stack([r.probability for r in results], axis, np.float32),
        std=_stack([r.std for r in results], axis, np.float32),
        affine=volume.affine.copy(), header=volume.header, spacing=volume.spacing,
        axis=axis, case=volume.name, intensity=intensity, options=opts,
        label=volume.label, source=volume.source)


def _check_axis(axis) -> int:
    if axis is None:
        return 2
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
            or not -3 <= axis <= 2:
        raise ValueError(f"axis must be 0, 1 or 2 (a voxel axis; -1 the last), got {axis!r}")
    return int(axis) % 3


def _model_channels(data: np.ndarray, want: int, volume: Volume, intensity: str):
    """(X, Y, Z, C) -> (X, Y, Z, want): the same rule as for images (channels.py), on the
    whole volume at once; converting raw intensities is refused (luma clamps to [0, 1])."""
    have = data.shape[-1]
    if have == want:
        return data
    where = f"{volume.source or volume.name}"
    if intensity == "raw" and not (have == 1 and want == 3):
        raise ImageInputError(f"{where}: the model takes {want}-channel images, this volume "
                              f"has {have} channel{'s' if have != 1 else ''}")
    chw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, -1, 0)))
    out, note = match_channels(chw.reshape(have, -1, data.shape[2]), want, where)
    warnings.warn(f"{note} for the volume {volume.name} (the model takes {want}-channel "
                  "images)", ChannelNote, stacklevel=3)
    return np.moveaxis(out.reshape(want, *data.shape[:3]).numpy(), 0, -1)


def _stack(slices: list, axis: int, dtype) -> np.ndarray:
    """(H, W) slices -> (X, Y, Z); (K, H, W) per-class maps -> (X, Y, Z, K)."""
    arrays = [np.asarray(s) for s in slices]
    if arrays[0].ndim == 3:
        return np.moveaxis(np.stack(arrays, axis=axis + 1), 0, -1).astype(dtype, copy=False)
    return np.stack(arrays, axis=axis).astype(dtype, copy=False)


def _bar(total: int, enabled: bool, name: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="slice", desc=name)
