"""Helpers of the volume tests: a stub segmenter whose answer is known, tiny random-weight
models with 1 or 4 image channels, and volumes written with nibabel / pydicom (no downloads).

A module, not a conftest.py (tests elsewhere import tests/conftest.py as `conftest`).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import channels_pipe, make_model, seeded_network

MISSING = [m for m in ("nibabel", "pydicom") if importlib.util.find_spec(m) is None]
SKIP_WITHOUT_VOLUMES = pytest.mark.skipif(
    bool(MISSING), reason=f"the volumes extra is not installed ({', '.join(MISSING)})")
FAST = {"steps": 2, "ensemble": 2}


def threshold_segmenter(channels: int = 1, threshold: float = 0.5):
    """A Segmenter whose mask is its view's first channel > threshold, at the slice's own
    size (the view is the slice): what any slice must come back as is known exactly."""
    from dsd_fast.options import Choices
    from dsd_fast.segmenter import Segmenter

    class Threshold(Segmenter):
        device = torch.device("cpu")
        seen_keys: list = []

        @property
        def channels(self):
            return channels

        @property
        def mask_channels(self):
            return 1

        def choices(self):
            return Choices()

        def view(self, chw, opts=None):
            return chw

        def draw(self, views, keys, opts):
            self.seen_keys.extend(keys)
            sign = torch.where(views[:, :1] > threshold, 1.0, -1.0)
            return sign.expand(-1, opts.ensemble, -1, -1)

    return Threshold()


def tiny_dermosegdiff(channels: int, seed: int = 0):
    return channels_pipe(channels, seed)


def two_class_pipe(seed: int = 0):
    """A tiny DermoSegDiff of two classes (config tiny_2class), every weight moved off its
    initial value."""
    import dsd_fast
    return dsd_fast.pipeline_from_network(make_model("tiny_2class", seed))


def tiny_official_medsegdiff(image_channels: int = 4, seed: int = 0):
    """The official MedSegDiff code's network, tiny, taking 4 modalities + the mask."""
    import dsd_fast
    return dsd_fast.pipeline_from_network(
        seeded_network("msd_official_tiny", seed, in_channels=image_channels + 1))


def phantom(shape=(12, 10, 6)) -> np.ndarray:
    """An asymmetric volume: a bright block in one corner (x < 4, y >= 6, z < 3) on a dim
    ramp, so any flip or swap of axes moves the block."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    vol = 0.1 + 0.2 * (x + 2 * y + 3 * z) / (sum(shape) * 3)
    vol[:4, 6:, :3] = 1.0
    vol[shape[0] // 2, 2, shape[2] - 2] = 0.9      # one lone voxel elsewhere
    return vol.astype(np.float32) * 1000     # scanner-like values


def flipped_affine() -> np.ndarray:
    """Anisotropic voxels, a flip of x and a rotation about z: not diagonal."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-0.8, 1.5, 3.0])
    aff[:3, 3] = (10.0, -20.0, 5.0)
    return aff


def save_nifti(path, data, affine, qform=None, dtype=None):
    import nibabel as nib
    img = nib.Nifti1Image(data if dtype is None else data.astype(dtype), affine)
    img.set_sform(affine, code=2)
    img.set_qform(affine if qform is None else qform, code=1)
    nib.save(img, str(path))
    return path


def write_dicom_slice(path, pixels: np.ndarray, position, orientation, spacing,
                      instance: int, series_uid: str = "1.2.3.4", thickness: float = 2.0,
                      slope: float = 1.0, intercept: float = 0.0):
    """One single-frame CT-like DICOM file (uint16 pixels)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = thickness
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


BRATS_CASE = "BraTS20_Training_001"
BRATS_SHAPE = (24, 20, 4)


def write_synthetic_brats_case(parent, case: str = BRATS_CASE, seg: bool = True,
                               gz: bool = True):
    """A small BraTS 2020-style case folder, the same bytes every time: four int16
    modalities (different ranges, a brighter 'tumour' in each) and a seg with labels
    0, 1, 2, 4; BraTS's affine diag(-1, -1, 1). -> the folder."""
    import nibabel as nib
    from pathlib import Path
    folder = Path(parent) / case
    folder.mkdir(parents=True)
    rng = np.random.default_rng(35)
    x, y, z = np.meshgrid(*(np.arange(n) for n in BRATS_SHAPE), indexing="ij")
    tumour = ((x - 9) ** 2 + (y - 12) ** 2 + 4 * (z - 2) ** 2) < 30
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (23.0, 19.0, 0.0)
    ext = ".nii.gz" if gz else ".nii"
    for m, (scale, lift) in zip(("t1", "t1ce", "t2", "flair"),
                                ((400, 150), (900, 700), (1500, 900), (600, 300))):
        vol = rng.integers(0, scale, BRATS_SHAPE) + lift * tumour
        vol[:2] = 0                                        # background rows, as skull-stripped
        nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), str(folder / f"{case}_{m}{ext}"))
    if seg:
        labels = np.zeros(BRATS_SHAPE, np.uint8)
        labels[tumour] = 2
        labels[tumour & (x < 9)] = 1
        labels[tumour & (y > 13)] = 4
        nib.save(nib.Nifti1Image(labels, affine), str(folder / f"{case}_seg{ext}"))
    return folder
