"""Any volume path -> a Volume: the one entry point that picks the reader.

    read_volume("case.nii.gz")             NIfTI (reader.read_nifti)
    read_volume("BraTS20_Training_001/")   a BraTS case folder (brats.read_brats_case)
    read_volume("series/")                 a DICOM series folder (reader.read_dicom_series)
    read_volume("slice.dcm")               a DICOM file (reader.read_dicom_file)
"""
from __future__ import annotations

from pathlib import Path

from ..images import ImageInputError
from .brats import find_brats_files, read_brats_case
from .reader import (Volume, is_dicom_file, is_nifti, read_dicom_file, read_dicom_series,
                     read_nifti)


def read_volume(path) -> Volume:
    """A NIfTI file, a DICOM file, a DICOM series folder or a BraTS case folder -> Volume
    (module docstring). Anything else is an ImageInputError saying what is accepted."""
    path = Path(path)
    if not path.exists():
        raise ImageInputError(f"{path}: no such file or folder")
    if path.is_dir():
        if find_brats_files(path, strict=False) is not None:
            return read_brats_case(path)
        return read_dicom_series(path)
    if is_nifti(path):
        return read_nifti(path)
    if is_dicom_file(path):
        return read_dicom_file(path)
    raise ImageInputError(f"{path}: not a volume (expected .nii, .nii.gz, a DICOM file, a "
                          "DICOM series folder or a BraTS case folder)")
