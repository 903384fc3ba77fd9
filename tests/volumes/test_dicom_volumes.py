"""#35 item 2: DICOM in (a series folder, a single file, a multi-frame file) -> a volume in
(row, column, slice) order whose affine places each voxel where DICOM's geometry says, and
a mask volume written as NIfTI with that affine. Synthetic files made with pydicom."""
from __future__ import annotations

import numpy as np
import pytest

from volume_support import FAST, SKIP_WITHOUT_VOLUMES, threshold_segmenter, write_dicom_slice

pytestmark = SKIP_WITHOUT_VOLUMES

# an oblique, sagittal-ish orientation: rows run along +y (anterior->posterior in LPS),
# columns down -z; the normal is the cross product
ROW_DIR = np.array([0.0, 1.0, 0.0])
COL_DIR = np.array([0.0, 0.0, -1.0])
SPACING = (0.7, 1.3)                     # between rows, between columns (mm)
STEP = 2.5 * np.cross(ROW_DIR, COL_DIR)


def _slices(n=4, rows=8, cols=10):
    rng = np.random.default_rng(1)
    out = []
    for k in range(n):
        px = rng.integers(0, 200, (rows, cols)).astype(np.uint16)
        out.append(px)
    out[min(1, n - 1)][1:3, 3:5] = 3000     # a bright patch in slice 1
    return out


def _write_series(folder, slices, origin=(-30.0, 12.0, 40.0)):
    folder.mkdir()
    order = [2, 0, 3, 1]                      # written out of order, instance numbers too
    for k in order:
        write_dicom_slice(folder / f"im{order.index(k)}.dcm", slices[k],
                          np.asarray(origin) + k * STEP, [*ROW_DIR, *COL_DIR], SPACING,
                          instance=10 - k, slope=2.0, intercept=-1024.0)
    (folder / "notes.txt").write_text("not DICOM")
    return folder


def _ras(lps):
    return np.array([-lps[0], -lps[1], lps[2]])


def test_series_folder_sorted_by_position_with_its_geometry(tmp_path):
    from dsd_fast.volumes import read_volume
    slices = _slices()
    vol = read_volume(_write_series(tmp_path / "series", slices))
    assert vol.kind == "dicom" and vol.data.shape == (8, 10, 4, 1)
    for k in range(4):                                      # sorted by position, not files
        np.testing.assert_array_equal(vol.data[:, :, k, 0], slices[k] * 2.0 - 1024.0)
    origin = np.array([-30.0, 12.0, 40.0])
    for (r, c, k) in [(0, 0, 0), (5, 7, 2), (7, 9, 3)]:
        lps = origin + k * STEP + c * SPACING[1] * ROW_DIR + r * SPACING[0] * COL_DIR
        np.testing.assert_allclose(vol.affine @ [r, c, k, 1], [*_ras(lps), 1], atol=1e-9)
    np.testing.assert_allclose(vol.spacing, (0.7, 1.3, 2.5))


def test_series_mask_written_as_nifti_in_place(tmp_path):
    import nibabel as nib

    from dsd_fast.volumes import segment_volume, write_volume_outputs
    slices = _slices()
    folder = _write_series(tmp_path / "series", slices)
    res = segment_volume(threshold_segmenter(), folder, **FAST)
    want = np.zeros((8, 10, 4), np.uint8)
    want[1:3, 3:5, 1] = 1
    np.testing.assert_array_equal(res.mask, want)
    paths = write_volume_outputs(res, tmp_path / "out")
    out = nib.load(str(paths["mask"]))
    assert paths["mask"].name == "series_mask.nii.gz"
    # the written mask's bright voxel sits where DICOM put the bright pixel
    r, c, k = np.argwhere(np.asarray(out.dataobj) > 0)[0]
    lps = np.array([-30.0, 12.0, 40.0]) + k * STEP + c * 1.3 * ROW_DIR + r * 0.7 * COL_DIR
    np.testing.assert_allclose(out.affine @ [r, c, k, 1], [*_ras(lps), 1], atol=1e-5)
    assert int(out.header["sform_code"]) == 1 and int(out.header["qform_code"]) == 1
    with pytest.raises(ValueError, match="input's folder"):
        write_volume_outputs(res, folder / "inside")


def test_single_file_and_two_series(tmp_path):
    from dsd_fast.images import ImageInputError
    from dsd_fast.volumes import read_volume
    px = _slices(1)[0]
    one = write_dicom_slice(tmp_path / "one.dcm", px, (1, 2, 3), [1, 0, 0, 0, 1, 0], (0.5, 0.5),
                            instance=1)
    vol = read_volume(one)
    assert vol.data.shape == (8, 10, 1, 1) and vol.name == "one"
    np.testing.assert_allclose(vol.spacing, (0.5, 0.5, 2.0))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_dicom_slice(mixed / "a.dcm", px, (0, 0, 0), [1, 0, 0, 0, 1, 0], (1, 1), 1, "1.1")
    write_dicom_slice(mixed / "b.dcm", px, (0, 0, 1), [1, 0, 0, 0, 1, 0], (1, 1), 2, "1.2")
    with pytest.raises(ImageInputError, match="holds 2 DICOM series"):
        read_volume(mixed)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageInputError, match="no NIfTI file, DICOM file or BraTS case"):
        read_volume(empty)


def test_multiframe_file_per_frame_positions(tmp_path):
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from dsd_fast.volumes import read_volume
    frames = np.stack(_slices(3, rows=6, cols=5))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"     # enhanced MR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "mf.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 6, 5, 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    orient, measures = Dataset(), Dataset()
    orient.ImageOrientationPatient = [*ROW_DIR, *COL_DIR]
    measures.PixelSpacing, measures.SliceThickness = [0.7, 1.3], 2.5
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in range(3):
        g, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [float(v) for v in np.array([5.0, 6.0, 7.0]) + k * STEP]
        g.PlanePositionSequence = Sequence([pos])
        per.append(g)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(str(tmp_path / "mf.dcm"), enforce_file_format=True)
    vol = read_volume(tmp_path / "mf.dcm")
    assert vol.data.shape == (6, 5, 3, 1)
    np.testing.assert_array_equal(vol.data[..., 0], np.moveaxis(frames, 0, -1))
    lps = np.array([5.0, 6.0, 7.0]) + 2 * STEP + 4 * 1.3 * ROW_DIR + 3 * 0.7 * COL_DIR
    np.testing.assert_allclose(vol.affine @ [3, 4, 2, 1], [*_ras(lps), 1], atol=1e-9)
