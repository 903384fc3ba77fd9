"""Writing a segmented volume as NIfTI, placed where the input was.

    write_volume_outputs(result, "out/")  ->  out/<case>_mask.nii.gz         uint8 {0, 1}
                                              out/<case>_prob.nii.gz         float32 [0, 1]
                                              out/<case>_uncertainty.nii.gz  float32 (std)

Each file has the input's affine, a header description naming what it holds and the slice
axis ("dsd-fast mask, slices along voxel axis 2") and, for a NIfTI input, a copy of its
header with both of its transforms kept as they were (qform and sform with their codes; the
data type, scaling and intensity range set for the new contents), so a viewer lays the mask
over the input voxel for voxel. A DICOM input's mask gets a fresh header whose qform and
sform are the affine computed from the series' geometry (reader.dicom_affine), code 1
(scanner).

DICOM-SEG is not written: it needs the source instances' UIDs, a segment description and
about a dozen mandatory modules to be a valid object, while NIfTI is what BraTS tools,
nnU-Net, ITK-SNAP and 3D Slicer open directly. Files are written atomically (io.py) and
never into the input's own folder.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..io import atomic_write
from .reader import _nibabel

SUFFIXES = {"mask": "_mask.nii.gz", "probability": "_prob.nii.gz",
            "std": "_uncertainty.nii.gz"}


def output_paths(out_dir, case: str) -> dict[str, Path]:
    """{"mask" | "probability" | "std": path} a case's outputs are written to."""
    return {k: Path(out_dir) / f"{case}{s}" for k, s in SUFFIXES.items()}


def nifti_image(data: np.ndarray, affine: np.ndarray, header=None):
    """A Nifti1Image of `data` carrying `affine`; with the input's `header`: its copy, with
    the input's qform and sform (and codes) kept exactly."""
    nib = _nibabel()
    if header is None or not isinstance(header, nib.Nifti1Header):
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        return img
    hdr = header.copy()
    img = nib.Nifti1Image(data, affine, header=hdr)
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    # Nifti1Image(affine=...) rewrites both transforms from `affine`; put the input's back
    img.set_qform(qform if qform is not None else affine, code=int(qcode))
    img.set_sform(sform if sform is not None else affine, code=int(scode))
    img.header.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)           # values as stored, no input scaling
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    img.header["dim"][0] = data.ndim                # a 4-D input's header, a 3-D output
    return img


def write_nifti(target, data: np.ndarray, affine: np.ndarray, header=None,
                description: str | None = None) -> Path:
    """`data` as a .nii.gz at `target`, atomically; `description` (at most 79 ASCII
    characters) in the header's descrip field."""
    img = nifti_image(data, affine, header)
    if description is not None:
        img.header["descrip"] = description.encode("ascii")[:79]
    payload = gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)
    return atomic_write(target, lambda f: f.write(payload))


def write_volume_outputs(result, out_dir, case: str | None = None) -> dict[str, Path]:
    """A VolumeResult's mask, probability and uncertainty as NIfTI in `out_dir` (module
    docstring) -> their paths. Refuses `out_dir` being the input's own folder (or, for a
    folder input, inside it)."""
    case = case or result.case
    out_dir = Path(out_dir)
    _refuse_input_folder(out_dir, result.source)
    paths = output_paths(out_dir, case)
    arrays = {"mask": result.mask.astype(np.uint8),
              "probability": result.probability.astype(np.float32),
              "std": result.std.astype(np.float32)}
    for key, path in paths.items():
        # what made it, read back by any NIfTI tool (fslhd, nibabel's header["descrip"])
        write_nifti(path, arrays[key], result.affine, result.header,
                    f"dsd-fast {key}, slices along voxel axis {result.axis}")
    return paths


def _refuse_input_folder(out_dir: Path, source: str) -> None:
    if not source:
        return
    src = Path(source)
    inputs = src if src.is_dir() else src.parent
    out = Path(os.path.realpath(out_dir))
    inp = Path(os.path.realpath(inputs))
    if out == inp or (src.is_dir() and inp in out.parents):
        raise ValueError(f"{out_dir} is the input's folder ({inputs}); write the outputs "
                         "to another folder (the input's files are never written beside)")
