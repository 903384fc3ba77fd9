"""#35 item 2: a volume segmented slice by slice comes back in the input's voxel order and
is written with the input's affine (an asymmetric phantom, a flipped anisotropic affine, a
segmenter whose answer is known)."""
from __future__ import annotations

import numpy as np
import pytest

from volume_support import (FAST, SKIP_WITHOUT_VOLUMES, flipped_affine, phantom, save_nifti,
                            threshold_segmenter)

pytestmark = SKIP_WITHOUT_VOLUMES


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_mask_voxel_ijk_is_input_voxel_ijk(tmp_path, axis):
    from dsd_fast.volumes import segment_volume
    vol = phantom()
    path = save_nifti(tmp_path / "phantom.nii.gz", vol, flipped_affine(), dtype=np.int16)
    seg = threshold_segmenter()
    res = segment_volume(seg, path, axis=axis, **FAST)
    # scaled per volume to [0, 1] (min 100, max 1000): the view's 0.5 is the raw 550
    want = vol > 550
    assert want.sum() == 4 * 4 * 3 + 1
    assert res.mask.dtype == np.uint8 and res.mask.shape == vol.shape
    np.testing.assert_array_equal(res.mask, want.astype(np.uint8))
    np.testing.assert_array_equal(res.probability, want.astype(np.float32))
    assert res.std.shape == vol.shape and res.std.max() == 0
    assert res.axis == axis % 3
    n = vol.shape[axis]
    assert seg.seen_keys == [f"phantom:{axis % 3}:{k}" for k in range(n)]
    np.testing.assert_allclose(res.spacing, (0.8, 1.5, 3.0))


def test_written_files_keep_affine_qform_sform(tmp_path):
    import nibabel as nib

    from dsd_fast.volumes import segment_volume, write_volume_outputs
    vol = phantom()
    qform = flipped_affine()
    qform[:3, 3] += (1.0, 2.0, 3.0)               # a qform other than the sform, as scanners
    src = tmp_path / "in"
    src.mkdir()
    path = save_nifti(src / "case7.nii", vol, flipped_affine(), qform=qform)
    res = segment_volume(threshold_segmenter(), path, **FAST)
    paths = write_volume_outputs(res, tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == [
        "case7_mask.nii.gz", "case7_prob.nii.gz", "case7_uncertainty.nii.gz"]
    inp = nib.load(str(path))
    for key, p in paths.items():
        out = nib.load(str(p))
        np.testing.assert_allclose(out.affine, inp.affine, atol=1e-6)
        np.testing.assert_allclose(out.header.get_sform(), inp.header.get_sform(), atol=1e-6)
        np.testing.assert_allclose(out.header.get_qform(), inp.header.get_qform(), atol=1e-5)
        assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
        np.testing.assert_allclose(out.header.get_zooms(), inp.header.get_zooms())
        assert out.shape == vol.shape
    mask = nib.load(str(paths["mask"]))
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(mask.dataobj), (vol > 550).astype(np.uint8))
    assert nib.load(str(paths["probability"])).get_data_dtype() == np.float32
    # the input's folder is refused, and nothing was written next to the input
    with pytest.raises(ValueError, match="input's folder"):
        write_volume_outputs(res, src)
    assert sorted(p.name for p in src.iterdir()) == ["case7.nii"]


def test_four_channel_nifti_feeds_a_four_channel_model(tmp_path):
    """(X, Y, Z, 4) is a 4-channel volume; each slice's mask is the mask segment() gives the
    same (4, H, W) slice with the same noise key, whatever the batch."""
    import torch
    from volume_support import tiny_dermosegdiff

    from dsd_fast.volumes import segment_volume
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 500, (14, 11, 3, 4)).astype(np.float32)
    vol[2:9, 3:8] += 400
    path = save_nifti(tmp_path / "stack.nii.gz", vol, flipped_affine())
    pipe = tiny_dermosegdiff(4)
    res = segment_volume(pipe, path, batch_slices=2, **FAST)
    one = segment_volume(pipe, path, batch_slices=1, **FAST)
    assert res.mask.shape == (14, 11, 3) and res.options.batch_size == 2
    np.testing.assert_array_equal(res.mask, one.mask)
    np.testing.assert_allclose(res.probability, one.probability, atol=1e-5)   # batch sums
    scaled = (vol - vol.min(axis=(0, 1, 2))) / (vol.max(axis=(0, 1, 2)) - vol.min(axis=(0, 1, 2)))
    for k in range(3):
        chw = torch.from_numpy(np.moveaxis(scaled[:, :, k], -1, 0).astype(np.float32))
        alone = pipe.segment([chw], noise_keys=[f"stack:2:{k}"], **FAST)[0]
        np.testing.assert_array_equal(res.mask[:, :, k], alone.mask.astype(np.uint8))
        np.testing.assert_allclose(res.probability[:, :, k], alone.probability, atol=1e-6)


def test_channel_mismatch_and_bad_axis(tmp_path):
    from dsd_fast.images import ImageInputError
    from dsd_fast.volumes import segment_volume
    path = save_nifti(tmp_path / "gray.nii.gz", phantom(), np.eye(4))
    with pytest.raises(ImageInputError, match="takes 4-channel images, this one has 1"):
        segment_volume(threshold_segmenter(channels=4), path, **FAST)
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        segment_volume(threshold_segmenter(), path, axis=3, **FAST)
    with pytest.raises(ValueError, match="intensity must be one of"):
        segment_volume(threshold_segmenter(), path, intensity="window", **FAST)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(ImageInputError, match="not a readable NIfTI"):
        segment_volume(threshold_segmenter(), bad, **FAST)


def test_gray_volume_replicated_for_rgb_model(tmp_path):
    import warnings

    from volume_support import tiny_dermosegdiff

    from dsd_fast.channels import ChannelNote
    from dsd_fast.volumes import segment_volume
    path = save_nifti(tmp_path / "g.nii.gz", phantom((9, 8, 5)), np.eye(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = segment_volume(tiny_dermosegdiff(3), path, **FAST)
    assert res.mask.shape == (9, 8, 5)
    notes = [w for w in caught if issubclass(w.category, ChannelNote)]
    assert len(notes) == 1 and "replicated" in str(notes[0].message)
