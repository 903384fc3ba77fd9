"""#35 item 2: a BraTS case folder is read as the official MedSegDiff loader reads it
(guided_diffusion/bratsloader.py, BRATSDataset3D): modality order, file-name parsing, the
slice axis, raw intensities, the merged label, and its Resize((S, S)) as the segmenter's
view. The goldens were made by running the official loader on the same synthetic case
(tests/volumes/make_brats_golden.py); only its outputs are stored."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from volume_support import (BRATS_CASE, BRATS_SHAPE, FAST, SKIP_WITHOUT_VOLUMES,
                            tiny_official_medsegdiff, write_synthetic_brats_case)

pytestmark = SKIP_WITHOUT_VOLUMES
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "brats_loader_golden.safetensors"


@pytest.fixture(scope="module")
def golden():
    from safetensors import safe_open
    with safe_open(str(GOLDEN), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture
def case(tmp_path):
    return write_synthetic_brats_case(tmp_path / "cases")


def test_stacking_slices_and_label_equal_the_official_loader(golden, case):
    from dsd_fast.volumes import MODALITIES, read_volume
    from dsd_fast.volumes.segment import scaled, slice_image
    tensors, meta = golden
    assert json.loads(meta["seqtypes"])[:4] == list(MODALITIES)
    vol = read_volume(case)
    assert vol.kind == "brats" and vol.name == BRATS_CASE and vol.data.shape == (*BRATS_SHAPE, 4)
    raw = scaled(vol, "raw")                       # what segment_volume feeds a BraTS case
    for k in range(BRATS_SHAPE[2]):
        chw = slice_image(raw, 2, k)               # the official [:, :, k]
        assert torch.equal(chw, tensors[f"image_{k}"]), k
        assert torch.equal(torch.from_numpy(vol.label[:, :, k]).to(torch.uint8),
                           tensors[f"label_{k}"][0]), k


def test_resize_is_the_official_transform(golden, case):
    """Its Resize((S, S)) on the (4, H, W) float64 slice: bilinear with antialiasing, which
    the official family's view does at S = image_size (float32 here)."""
    from dsd_fast.preprocess import resize_image
    from dsd_fast.volumes import read_volume
    from dsd_fast.volumes.segment import slice_image
    tensors, _ = golden
    vol = read_volume(case)
    pipe = tiny_official_medsegdiff(4)             # image_size 32
    opts = pipe.resolve(**FAST)
    for k in (0, 2):
        chw = slice_image(vol.data, 2, k)
        view = pipe.view(chw, opts)
        want = tensors[f"resized32_{k}"]
        assert view.shape == want.shape == (4, 32, 32)
        # values up to ~2400: float32 against float64 arithmetic
        torch.testing.assert_close(view.double(), want, rtol=1e-6, atol=1e-3)
        torch.testing.assert_close(resize_image(chw, 16).double(), tensors[f"resized16_{k}"],
                                   rtol=1e-6, atol=1e-3)


def test_file_names_parsed_as_the_official_split(golden, tmp_path):
    from dsd_fast.images import ImageInputError
    from dsd_fast.volumes import find_brats_files
    from dsd_fast.volumes.brats import modality_of
    _, meta = golden
    for name, official in json.loads(meta["parsed_names"]).items():
        assert modality_of(name) == official, name
    assert modality_of("BraTS2021_00000_t1ce.nii.gz") == "t1ce"      # 2021 names too
    case = write_synthetic_brats_case(tmp_path, seg=False, gz=False)
    files = find_brats_files(case)
    assert sorted(files) == ["flair", "t1", "t1ce", "t2"]            # seg is optional
    (case / f"{BRATS_CASE}_t2.nii").unlink()
    with pytest.raises(ImageInputError, match=r"\*_t2 missing"):
        find_brats_files(case)


def test_official_medsegdiff_segments_a_brats_case(case, tmp_path):
    """A 4-modality official MedSegDiff network (in_ch 5) on the case folder: the volume in
    the case's voxel order, each slice's mask independent of its batch, NIfTI outputs with
    the t1 file's affine, and a score against the case's own seg."""
    import nibabel as nib

    from dsd_fast.volumes import segment_volume, write_volume_outputs
    pipe = tiny_official_medsegdiff(4)
    res = segment_volume(pipe, case, batch_slices=4, **FAST)
    again = segment_volume(pipe, case, batch_slices=1, **FAST)
    assert res.intensity == "raw" and res.mask.shape == BRATS_SHAPE
    np.testing.assert_array_equal(res.mask, again.mask)
    paths = write_volume_outputs(res, tmp_path / "out")
    t1 = nib.load(str(case / f"{BRATS_CASE}_t1.nii.gz"))
    for p in paths.values():
        np.testing.assert_allclose(nib.load(str(p)).affine, t1.affine)
    scores = res.score()
    assert set(scores) >= {"dice", "hd95_mm", "volume_ml", "gt_volume_ml"}
    assert scores["gt_volume_ml"] == pytest.approx(res.label.sum() / 1000)
