"""Reading volumes: NIfTI (nibabel) and DICOM (pydicom) into one `Volume`.

    read_nifti(path)           a .nii / .nii.gz file -> Volume
    read_dicom_file(path)      a DICOM file (one slice or multi-frame) -> Volume
    read_dicom_series(folder)  a folder holding one DICOM series -> Volume
(load.read_volume picks among these and brats.read_brats_case by what a path is.)

A Volume keeps the voxels in the file's own voxel order, (X, Y, Z, C): (i, j, k) of the
mask written back is (i, j, k) of the input, so the input's affine places it. NIfTI: the
array nibabel gives (`get_fdata()`, scaling slope/intercept applied), a 4-D file's last axis
being its channels (a BraTS stack of 4 modalities). DICOM: i = row, j = column, k = slice;
the affine maps them to RAS millimetres from ImagePositionPatient, ImageOrientationPatient
and PixelSpacing (DICOM's LPS turned into NIfTI's RAS), so a DICOM series' mask is written
as NIfTI with the series' geometry.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..images import ImageInputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeGeometryWarning(UserWarning):
    """A DICOM file without the tags that place it in space: unit spacing assumed."""


@dataclass
class Volume:
    """One volume in its file's voxel order.

    data: (X, Y, Z, C) float32, raw intensities (scaling slope/intercept applied).
    affine: (4, 4) voxel (i, j, k, 1) -> RAS millimetres.
    header: the NIfTI header it came with (None for DICOM).
    label: (X, Y, Z) bool ground truth where the source has one (a BraTS case's seg > 0).
    kind: "nifti", "dicom" or "brats"; name: the case name outputs are called by.
    """
    data: np.ndarray
    affine: np.ndarray
    header: object = None
    label: np.ndarray | None = None
    kind: str = "nifti"
    name: str = "volume"
    source: str = ""
    files: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (the affine's column lengths)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def channels(self) -> int:
        return int(self.data.shape[-1])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[:3])


def case_name(path) -> str:
    """A file's name without .nii.gz / .nii / .dcm; a folder's own name."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES[::-1] + DICOM_SUFFIXES:     # ".nii.gz" before ".nii"
        if name.lower().endswith(suffix):
            return name[:-len(suffix)] or name
    return name


def is_nifti(path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


# ----------------------------------------------------------------------------- NIfTI
def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise ImportError("reading NIfTI needs nibabel: pip install 'dsd_fast[volumes]'") \
            from None
    return nibabel


def load_nifti(path):
    """nibabel's image of `path`, with a clear error for a file it cannot read."""
    nib = _nibabel()
    try:
        return nib.load(os.fspath(path))
    except Exception as e:           # nibabel raises several kinds for a bad file
        raise ImageInputError(f"{path}: not a readable NIfTI file ({e})") from None


def read_nifti(path) -> Volume:
    """A 3-D (X, Y, Z) or 4-D (X, Y, Z, C) NIfTI file -> Volume (C = 1 or the 4th axis);
    a 2-D file is one slice (X, Y, 1)."""
    img = load_nifti(path)
    # float64 as nibabel and the official BraTS loader read it, then float32 (exact for the
    # integer intensities scanners store)
    data = np.asarray(img.get_fdata(), dtype=np.float64)
    if data.ndim == 5 and data.shape[3] == 1:          # NIfTI vectors: (X, Y, Z, 1, C)
        data = data[:, :, :, 0, :]
    if data.ndim == 2:                                   # one slice: a volume of depth 1
        data = data[:, :, None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ImageInputError(f"{path}: expected a 3-D volume (X, Y, Z) or a 4-D channel "
                              f"stack (X, Y, Z, C), got shape {data.shape}")
    _check_finite(data, path)
    return Volume(data.astype(np.float32), np.asarray(img.affine, dtype=np.float64),
                  img.header.copy(), kind="nifti", name=case_name(path), source=str(path))


def _check_finite(data: np.ndarray, where) -> None:
    if data.size == 0:
        raise ImageInputError(f"{where}: empty volume of shape {data.shape}")
    if not np.isfinite(data).all():
        raise ImageInputError(f"{where}: contains NaN or infinite values")


# ----------------------------------------------------------------------------- DICOM
def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImportError("reading DICOM needs pydicom: pip install 'dsd_fast[volumes]'") \
            from None
    return pydicom


def _is_dicom_file(path: Path) -> bool:
    """The 'DICM' mark at byte 128 (Part 10 files), or a DICOM suffix."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM":
                return True
    except OSError:
        return False
    return path.suffix.lower() in DICOM_SUFFIXES


def is_dicom_file(path) -> bool:
    """A DICOM Part 10 file (its 'DICM' mark) or a file named .dcm / .dicom / .ima."""
    path = Path(path)
    return path.is_file() and _is_dicom_file(path)


def is_dicom_series_folder(path, probe: int = 8) -> bool:
    """A folder whose first `probe` files (sorted, hidden ones skipped) are all DICOM: a
    series, one volume. Cheap: reads 132 bytes of at most `probe` files."""
    path = Path(path)
    try:
        if not path.is_dir():
            return False
        files = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError:
        return False
    files = [p for p in files if p.is_file()][:probe]
    return bool(files) and all(_is_dicom_file(p) for p in files)


def _read_dataset(path: Path, pixels: bool = True):
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(os.fspath(path), stop_before_pixels=not pixels,
                               force=path.suffix.lower() in DICOM_SUFFIXES)
    except Exception as e:
        raise ImageInputError(f"{path}: not a readable DICOM file ({e})") from None


def _pixels(ds, path) -> np.ndarray:
    """The stored values with RescaleSlope / RescaleIntercept applied (HU for CT), float64;
    (rows, cols) or (frames, rows, cols)."""
    if "PixelData" not in ds:
        raise ImageInputError(f"{path}: a DICOM file without pixel data")
    try:
        arr = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as e:
        raise ImageInputError(f"{path}: its pixel data cannot be decoded ({e}); a compressed "
                              "transfer syntax may need pydicom's pixel plugins") from None
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise ImageInputError(f"{path}: {ds.SamplesPerPixel} samples per pixel; volumes are "
                              "read from grayscale DICOM (one sample per pixel)")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return arr * slope + intercept


def _orientation(ds):
    """(row direction, column direction) unit vectors in LPS, or None."""
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None:
        seq = getattr(ds, "SharedFunctionalGroupsSequence", None)
        try:
            iop = seq[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except (TypeError, IndexError, AttributeError):
            return None
    v = np.asarray([float(x) for x in iop])
    return v[:3], v[3:]


def _pixel_spacing(ds) -> tuple[float, float] | None:
    """(between rows, between columns) in mm, or None."""
    ps = getattr(ds, "PixelSpacing", None)
    if ps is None:
        seq = getattr(ds, "SharedFunctionalGroupsSequence", None)
        try:
            ps = seq[0].PixelMeasuresSequence[0].PixelSpacing
        except (TypeError, IndexError, AttributeError):
            return None
    return float(ps[0]), float(ps[1])


def _slice_thickness(ds) -> float:
    for name in ("SpacingBetweenSlices", "SliceThickness"):
        v = getattr(ds, name, None)
        if v not in (None, ""):
            return float(v)
    seq = getattr(ds, "SharedFunctionalGroupsSequence", None)
    try:
        return float(seq[0].PixelMeasuresSequence[0].SliceThickness)
    except (TypeError, IndexError, AttributeError, ValueError):
        return 1.0


def dicom_affine(orientation, spacing, first_position, slice_step) -> np.ndarray:
    """Voxel (i = row, j = column, k = slice) -> RAS mm. DICOM's pixel (r, c) of a slice
    lies at P + c * dc * row_dir + r * dr * col_dir (PS3.3 C.7.6.2.1.1), in LPS."""
    row_dir, col_dir = orientation
    dr, dc = spacing
    lps = np.eye(4)
    lps[:3, 0] = col_dir * dr           # i walks down the rows: along the column direction
    lps[:3, 1] = row_dir * dc           # j walks along a row
    lps[:3, 2] = slice_step
    lps[:3, 3] = first_position
    return LPS_TO_RAS @ lps


def _geometry(ds, positions: list, path) -> np.ndarray:
    """The affine of slices at `positions` (LPS, in slice order) sharing `ds`'s orientation
    and spacing; unit spacing with a warning where the tags are missing."""
    orientation, spacing = _orientation(ds), _pixel_spacing(ds)
    if orientation is None or spacing is None or positions[0] is None:
        warnings.warn(f"{path}: no ImageOrientationPatient / PixelSpacing / "
                      "ImagePositionPatient; the volume's affine assumes 1 mm voxels",
                      VolumeGeometryWarning, stacklevel=3)
        return np.diag([1.0, 1.0, _slice_thickness(ds), 1.0])
    normal = np.cross(orientation[0], orientation[1])
    if len(positions) > 1:
        step = (np.asarray(positions[-1]) - np.asarray(positions[0])) / (len(positions) - 1)
    else:
        step = normal * _slice_thickness(ds)
    return dicom_affine(orientation, spacing, np.asarray(positions[0], dtype=np.float64),
                        step)


def _position(ds):
    ipp = getattr(ds, "ImagePositionPatient", None)
    return None if ipp is None else np.asarray([float(x) for x in ipp])


def _frame_positions(ds, frames: int) -> list:
    """A multi-frame file's per-frame ImagePositionPatient (enhanced DICOM), else the one
    top-level position stepped along the normal by the slice spacing."""
    seq = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if seq is not None and len(seq) == frames:
        try:
            return [np.asarray([float(x) for x in
                                g.PlanePositionSequence[0].ImagePositionPatient])
                    for g in seq]
        except (AttributeError, IndexError):
            pass
    first, orientation = _position(ds), _orientation(ds)
    if first is None or orientation is None:
        return [None] * frames
    normal = np.cross(*orientation)
    return [first + k * _slice_thickness(ds) * normal for k in range(frames)]


def read_dicom_file(path) -> Volume:
    """One DICOM file: a single slice (a volume of depth 1) or a multi-frame file (its
    frames are the slices, in stored order)."""
    path = Path(path)
    ds = _read_dataset(path)
    arr = _pixels(ds, path)
    if arr.ndim == 2:
        arr = arr[None]
        positions = [_position(ds)]
    else:
        positions = _frame_positions(ds, arr.shape[0])
    data = np.moveaxis(arr, 0, -1)[..., None]            # (rows, cols, slices, 1)
    _check_finite(data, path)
    return Volume(data.astype(np.float32), _geometry(ds, positions, path), None,
                  kind="dicom", name=case_name(path), source=str(path))


def read_dicom_series(folder) -> Volume:
    """A folder of single-slice DICOM files of one series -> Volume, slices sorted along
    the slice normal by ImagePositionPatient (InstanceNumber where positions are missing).
    Files that are not DICOM are ignored; several series are an error naming them."""
    folder = Path(folder)
    headers = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and _is_dicom_file(p):
            headers.append((p, _read_dataset(p, pixels=False)))
    if not headers:
        raise ImageInputError(f"{folder}: no NIfTI file, DICOM file or BraTS case in this "
                              "folder")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise ImageInputError(f"{folder}: holds {len(series)} DICOM series "
                              f"({', '.join(sorted(series))}); put each in its own folder")
    headers.sort(key=lambda h: _sort_key(h[1]))
    slices = []
    for p, _ in headers:
        arr = _pixels(_read_dataset(p), p)
        if arr.ndim != 2:
            raise ImageInputError(f"{p}: a multi-frame file inside a series folder; give it "
                                  "on its own")
        if slices and arr.shape != slices[0].shape:
            raise ImageInputError(f"{p}: {arr.shape[0]} x {arr.shape[1]} pixels, the series' "
                                  f"first slice {slices[0].shape[0]} x {slices[0].shape[1]}")
        slices.append(arr)
    data = np.stack(slices, axis=-1)[..., None]
    _check_finite(data, folder)
    positions = [_position(ds) for _, ds in headers]
    if any(p is None for p in positions):
        positions = [None] * len(positions)
    return Volume(data.astype(np.float32), _geometry(headers[0][1], positions, folder), None,
                  kind="dicom", name=folder.name, source=str(folder))


def _sort_key(ds):
    """Position along the slice normal where the slice says where it is, else
    InstanceNumber."""
    orientation, pos = _orientation(ds), _position(ds)
    if orientation is not None and pos is not None:
        return (0, float(np.dot(np.cross(*orientation), pos)))
    return (1, int(getattr(ds, "InstanceNumber", 0) or 0))
