"""A BraTS case folder as the official MedSegDiff code reads it (guided_diffusion/
bratsloader.py, `BRATSDataset3D`; ../shared/docs/medsegdiff.md "BraTS in the official code").

    BraTS20_Training_001/
        BraTS20_Training_001_t1.nii.gz  _t1ce  _t2  _flair  [_seg]

What the official loader does, and what is done here the same way:
- a file's modality is the part of its name after the last '_' up to the first '.'; on
  BraTS 2020 names this is the official `name.split('_')[3].split('.')[0]` (BraTS 2021's
  `BraTS2021_00000_t1.nii.gz` is read too, which the official split cannot);
- channels stacked in the order t1, t1ce, t2, flair (MODALITIES), each `get_fdata()`;
- **no intensity normalisation** (its `o / o.max()` is commented out): the raw intensities
  go to the network, which is what `segment_volume` feeds a BraTS case (intensity "raw");
- slices along the last voxel axis (`[:, :, k]`), no crop (commented out in the 3-D loader);
- the label is `seg > 0` (all tumour classes merged);
- its `Resize((S, S))` is the segmenter's view (bilinear with antialiasing, as torchvision's
  tensor resize), applied per slice by `segment_volume`.
Where the official loader asserts a `seg` file even when sampling, here it is optional.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..images import ImageInputError
from .reader import Volume, _check_finite, is_nifti, load_nifti

MODALITIES = ("t1", "t1ce", "t2", "flair")       # the official channel order
LABEL = "seg"


def modality_of(filename: str) -> str:
    """'BraTS20_Training_001_t1ce.nii.gz' -> 't1ce' (see the module docstring)."""
    return filename.rsplit("_", 1)[-1].split(".")[0].lower()


def is_case_folder(path) -> bool:
    """A folder holding any BraTS modality file (an incomplete case is still a case: reading
    it names what is missing). Cheap: names only."""
    path = Path(path)
    try:
        return path.is_dir() and any(
            is_nifti(p.name) and modality_of(p.name) in MODALITIES
            for p in path.iterdir() if not p.name.startswith("."))
    except OSError:
        return False


def find_brats_files(folder, strict: bool = True) -> dict | None:
    """{modality: path} of a BraTS case folder's NIfTI files (t1, t1ce, t2, flair and seg
    where present). A folder that is not a BraTS case: None, or with `strict` an
    ImageInputError naming what is missing."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not (p.is_file() and is_nifti(p.name)) or p.name.startswith("."):
            continue
        m = modality_of(p.name)
        if m in MODALITIES or m == LABEL:
            if m in found:
                raise ImageInputError(f"{folder}: two {m} files ({found[m].name}, {p.name})")
            found[m] = p
    missing = [m for m in MODALITIES if m not in found]
    if not missing:
        return found
    if not strict and not any(m in found for m in MODALITIES):
        return None                            # not a BraTS case at all
    raise ImageInputError(f"{folder}: a BraTS case needs *_t1, *_t1ce, *_t2 and *_flair "
                          f"NIfTI files (optional *_seg); "
                          f"{', '.join('*_' + m for m in missing)} missing")


def read_brats_case(folder) -> Volume:
    """A BraTS case folder -> a 4-channel Volume (t1, t1ce, t2, flair; raw intensities) with
    the t1 file's affine and header and, where a seg file is, its label seg > 0."""
    folder = Path(folder)
    files = find_brats_files(folder, strict=True)
    first = load_nifti(files[MODALITIES[0]])
    channels = []
    for m in MODALITIES:
        img = first if m == MODALITIES[0] else load_nifti(files[m])
        arr = np.asarray(img.get_fdata(), dtype=np.float64)
        if arr.ndim != 3:
            raise ImageInputError(f"{files[m]}: a BraTS modality is a 3-D volume, got shape "
                                  f"{arr.shape}")
        if channels and arr.shape != channels[0].shape:
            raise ImageInputError(f"{files[m]}: shape {arr.shape}, {files['t1'].name} "
                                  f"{channels[0].shape}")
        if not np.allclose(img.affine, first.affine, atol=1e-3):
            raise ImageInputError(f"{files[m]}: its affine differs from {files['t1'].name}'s;"
                                  " the modalities of a case must be co-registered")
        channels.append(arr)
    data = np.stack(channels, axis=-1)
    _check_finite(data, folder)
    label = None
    if LABEL in files:
        seg = np.asarray(load_nifti(files[LABEL]).get_fdata())
        if seg.shape != data.shape[:3]:
            raise ImageInputError(f"{files[LABEL]}: shape {seg.shape}, the modalities "
                                  f"{data.shape[:3]}")
        label = seg > 0                      # the official loader: all tumour classes merged
    return Volume(data.astype(np.float32), np.asarray(first.affine, dtype=np.float64),
                  first.header.copy(), label=label, kind="brats", name=folder.name,
                  source=str(folder), files={k: str(v) for k, v in files.items()})
