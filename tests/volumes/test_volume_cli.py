"""#35 item 2 on the command line: `dsd-fast segment CASES/ -o OUT --checkpoint brats` finds
BraTS case folders and NIfTI files beside images, writes each volume's NIfTI outputs with
the input's affine and a record in results.json (scored against a case's seg), gives the
API's masks, and a re-run skips the finished volumes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from volume_support import (BRATS_CASE, BRATS_SHAPE, FAST, SKIP_WITHOUT_VOLUMES,
                            flipped_affine, save_nifti, tiny_official_medsegdiff,
                            write_synthetic_brats_case)

pytestmark = SKIP_WITHOUT_VOLUMES
ARGS = ["--steps", "2", "--ensemble", "2", "-q"]


def test_segment_cases_folder_end_to_end(tmp_path):
    import nibabel as nib

    import dsd_fast
    from dsd_fast.cli import main
    from dsd_fast.volumes import segment_volume
    cases = tmp_path / "CASES"
    write_synthetic_brats_case(cases)
    rng = np.random.default_rng(3)
    stack = rng.uniform(0, 900, (20, 16, 3, 4)).astype(np.float32)
    save_nifti(cases / "stack4.nii.gz", stack, flipped_affine())
    (cases / "notes.txt").write_text("not an input")
    pipe = tiny_official_medsegdiff(4)
    model = str(dsd_fast.save_model(pipe, tmp_path / "brats.safetensors"))
    out = tmp_path / "OUT"
    assert main(["segment", str(cases), "-o", str(out), "--checkpoint", model, *ARGS]) == 0

    doc = json.loads((out / "results.json").read_text())
    recs = {r["key"]: r for r in doc["images"]}
    assert sorted(recs) == [BRATS_CASE, "stack4"] and doc["failed"] == []
    case = recs[BRATS_CASE]
    assert case["kind"] == "volume" and case["shape"] == list(BRATS_SHAPE)
    assert case["intensity"] == "raw" and recs["stack4"]["intensity"] == "volume"
    assert set(case["metrics"]) >= {"dice", "hd95_mm", "volume_ml", "gt_volume_ml"}
    for key, src in ((BRATS_CASE, cases / BRATS_CASE / f"{BRATS_CASE}_t1.nii.gz"),
                     ("stack4", cases / "stack4.nii.gz")):
        mask = nib.load(str(out / f"{key}_mask.nii.gz"))
        np.testing.assert_allclose(mask.affine, nib.load(str(src)).affine, atol=1e-6)
        assert (out / f"{key}_prob.nii.gz").is_file()
        assert (out / f"{key}_uncertainty.nii.gz").is_file()
        # the API's mask for the same volume, options and (case-named) noise keys
        api = segment_volume(pipe, src.parent if key == BRATS_CASE else src, **FAST)
        np.testing.assert_array_equal(np.asarray(mask.dataobj), api.mask)
    assert recs["stack4"]["volume_ml"] == pytest.approx(np.count_nonzero(api.mask) * 3.6 / 1000)
    report = (out / "index.html").read_text()                    # each shows a slice
    assert f'alt="{BRATS_CASE} overlay"' in report and 'alt="stack4 overlay"' in report

    # a re-run finds both finished and skips them
    assert main(["segment", str(cases), "-o", str(out), "--checkpoint", model, *ARGS]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in doc["images"]] == ["skipped", "skipped"]


def test_incomplete_case_is_a_failed_input_and_the_run_goes_on(tmp_path):
    import dsd_fast
    from dsd_fast.cli import main
    cases = tmp_path / "CASES"
    case = write_synthetic_brats_case(cases)
    (case / f"{BRATS_CASE}_flair.nii.gz").unlink()
    save_nifti(cases / "ok.nii.gz", np.random.default_rng(0).uniform(0, 1, (8, 8, 2, 4)),
               np.eye(4))
    model = str(dsd_fast.save_model(tiny_official_medsegdiff(4), tmp_path / "m.safetensors"))
    out = tmp_path / "OUT"
    assert main(["segment", str(cases), "-o", str(out), "--checkpoint", model, *ARGS]) == 1
    doc = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in doc["images"]] == ["ok"]
    assert len(doc["failed"]) == 1 and "*_flair missing" in doc["failed"][0]["error"]


def test_one_channel_model_png_dicom_and_nifti(tmp_path):
    """A 1-channel model on one command: a PNG image, a DICOM series folder, a DICOM file
    named on its own and a NIfTI volume; each volume's mask equals the API's."""
    import nibabel as nib
    from PIL import Image
    from volume_support import phantom, tiny_dermosegdiff, write_dicom_slice

    import dsd_fast
    from dsd_fast.cli import main
    from dsd_fast.volumes import segment_volume
    src = tmp_path / "in"
    (src / "series").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 14), dtype=np.uint8)) \
        .save(src / "photo.png")
    vol = phantom((10, 9, 3))
    for k in range(3):
        write_dicom_slice(src / "series" / f"s{k}.dcm", vol[:, :, k], (0, 0, 2.0 * k),
                          [1, 0, 0, 0, 1, 0], (0.5, 0.5), instance=k + 1)
    (tmp_path / "one").mkdir()
    single = write_dicom_slice(tmp_path / "one" / "single.dcm", vol[:, :, 0], (0, 0, 0),
                               [1, 0, 0, 0, 1, 0], (0.5, 0.5), instance=1)
    save_nifti(src / "gray.nii.gz", vol, flipped_affine())
    pipe = tiny_dermosegdiff(1)
    model = str(dsd_fast.save_model(pipe, tmp_path / "gray.safetensors"))
    out = tmp_path / "OUT"
    assert main(["segment", str(src), str(single), "-o", str(out), "--checkpoint", model,
                 *ARGS]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert sorted(r["key"] for r in doc["images"]) == ["gray", "photo", "series", "single"]
    assert (out / "photo_mask.png").is_file()
    for key, path in (("series", src / "series"), ("single", single),
                      ("gray", src / "gray.nii.gz")):
        written = nib.load(str(out / f"{key}_mask.nii.gz"))
        api = segment_volume(pipe, path, **FAST)
        np.testing.assert_array_equal(np.asarray(written.dataobj), api.mask)
        np.testing.assert_allclose(written.affine, api.affine)


def test_eval_scores_nifti_volumes_with_their_spacing(tmp_path, capsys):
    """`dsd-fast eval` on NIfTI masks: Dice, HD95 in mm from the ground truth's affine, mL;
    a BraTS case folder as ground truth; another voxel grid is an error (exit 2)."""
    import csv

    from dsd_fast.cli import main
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    (gt_dir / "caseB").mkdir(parents=True)
    aff = np.diag([2.0, 1.0, 0.5, 1.0])
    gt = np.zeros((10, 9, 8), np.uint8)
    gt[2:4] = 4                                    # a BraTS label: > 0 is tumour
    pred = np.zeros_like(gt)
    pred[5:7] = 1                                  # 3 voxels further along x: 6 mm
    save_nifti(gt_dir / "caseA.nii.gz", gt, aff)
    save_nifti(gt_dir / "caseB" / "caseB_seg.nii.gz", gt, aff)
    for case in ("caseA", "caseB"):
        save_nifti(pred_dir / f"{case}_mask.nii.gz", pred, aff)
    save_nifti(pred_dir / "caseA_prob.nii.gz", pred.astype(np.float32) * 0.7, aff)
    out = tmp_path / "scores"
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["image"] for r in rows] == ["caseA", "caseB"]
    for r in rows:
        assert float(r["dice"]) == 0.0 and float(r["hd95"]) == pytest.approx(6.0)
        assert float(r["volume_ml"]) == pytest.approx(2 * 9 * 8 * 1.0 / 1000)
    assert "hd95 in mm" in capsys.readouterr().out
    save_nifti(pred_dir / "caseA_mask.nii.gz", pred, np.diag([1.0, 1.0, 0.5, 1.0]))
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out)]) == 2
    assert "not one voxel grid" in capsys.readouterr().err


def test_batch_size_reaches_volumes_and_out_of_memory_is_a_failed_input(tmp_path, monkeypatch):
    from dsd_fast import Pipeline
    from dsd_fast.cli import main
    from volume_support import tiny_dermosegdiff

    import dsd_fast
    src = tmp_path / "in"
    src.mkdir()
    save_nifti(src / "a.nii.gz", np.random.default_rng(0).uniform(0, 1, (9, 8, 5)), np.eye(4))
    save_nifti(src / "b.nii.gz", np.random.default_rng(1).uniform(0, 1, (9, 8, 5)), np.eye(4))
    model = str(dsd_fast.save_model(tiny_dermosegdiff(1), tmp_path / "m.safetensors"))
    real, batch_sizes = Pipeline.segment_views, []

    def watched(self, views, sizes, keys, opts, *a, **kw):
        batch_sizes.append(opts.batch_size)
        if keys[0].startswith("b:"):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ...")
        return real(self, views, sizes, keys, opts, *a, **kw)
    monkeypatch.setattr(Pipeline, "segment_views", watched)
    out = tmp_path / "OUT"
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", model,
                 "--batch-size", "3", *ARGS]) == 1
    assert set(batch_sizes) == {3}
    doc = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in doc["images"]] == ["a"]
    assert "out of memory in the network at 3 slices" in doc["failed"][0]["error"]


def test_two_class_model_volume(tmp_path):
    """A model of two classes: the mask volume is the label map (0, 1, 2), each slice's equal
    to segment()'s for the same slice and noise key; probability and uncertainty are
    (X, Y, Z, K) volumes; the command line writes them with the input's affine."""
    import nibabel as nib
    import torch
    from volume_support import phantom, two_class_pipe

    import dsd_fast
    from dsd_fast.cli import main
    from dsd_fast.volumes import segment_volume
    src = tmp_path / "in"
    src.mkdir()
    vol = phantom((9, 8, 4))
    path = save_nifti(src / "v.nii.gz", vol, flipped_affine())
    pipe = two_class_pipe()
    res = segment_volume(pipe, path, **FAST)
    assert res.mask.shape == vol.shape and res.probability.shape == (*vol.shape, 2)
    assert res.std.shape == (*vol.shape, 2)
    scaled = (vol - vol.min()) / (vol.max() - vol.min())
    for k in range(vol.shape[2]):
        one = pipe.segment([torch.from_numpy(scaled[:, :, k][None].astype(np.float32))],
                           noise_keys=[f"v:2:{k}"], **FAST)[0]
        np.testing.assert_array_equal(res.mask[:, :, k], one.mask)
        np.testing.assert_allclose(res.probability[:, :, k], np.moveaxis(one.probability, 0, -1),
                                   atol=1e-6)
    model = str(dsd_fast.save_model(pipe, tmp_path / "two.safetensors"))
    out = tmp_path / "OUT"
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", model, *ARGS]) == 0
    labels = nib.load(str(out / "v_mask.nii.gz"))
    np.testing.assert_array_equal(np.asarray(labels.dataobj), res.mask)
    assert nib.load(str(out / "v_prob.nii.gz")).shape == (*vol.shape, 2)
    np.testing.assert_allclose(labels.affine, flipped_affine(), atol=1e-6)


def test_axis_on_the_command_line(tmp_path, capsys):
    """--axis slices a volume along the voxel axis chosen, with the API's masks for that
    axis; the record, the settings and each NIfTI's header description name it; a bad axis
    is a usage error naming the choices."""
    import nibabel as nib
    from volume_support import phantom, tiny_dermosegdiff

    import dsd_fast
    from dsd_fast.cli import main
    from dsd_fast.cli.errors import UsageError
    from dsd_fast.cli.run import segment_files
    from dsd_fast.volumes import segment_volume
    src = tmp_path / "in"
    src.mkdir()
    vol = phantom((9, 8, 5))
    path = save_nifti(src / "v.nii.gz", vol, flipped_affine())
    pipe = tiny_dermosegdiff(1)
    model = str(dsd_fast.save_model(pipe, tmp_path / "gray.safetensors"))
    for axis in (0, 1):
        out = tmp_path / f"OUT{axis}"
        assert main(["segment", str(src), "-o", str(out), "--checkpoint", model,
                     "--axis", str(axis), *ARGS]) == 0
        api = segment_volume(pipe, path, axis=axis, **FAST)
        written = nib.load(str(out / "v_mask.nii.gz"))
        np.testing.assert_array_equal(np.asarray(written.dataobj), api.mask)
        doc = json.loads((out / "results.json").read_text())
        assert doc["images"][0]["axis"] == axis and doc["settings"]["axis"] == axis
        for name in ("mask", "prob", "uncertainty"):
            descrip = nib.load(str(out / f"v_{name}.nii.gz")).header["descrip"].item()
            assert descrip.decode().endswith(f"slices along voxel axis {axis}")
    # slicing along x and along y give other masks (the axis reached the loop)
    assert not np.array_equal(nib.load(str(tmp_path / "OUT0" / "v_mask.nii.gz")).dataobj,
                              nib.load(str(tmp_path / "OUT1" / "v_mask.nii.gz")).dataobj)
    # without --axis: the last axis, as the official loader
    out = tmp_path / "OUT"
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", model, *ARGS]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["images"][0]["axis"] == 2 and "axis" not in doc["settings"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["segment", str(src), "-o", str(tmp_path / "bad"), "--axis", "3"])
    assert e.value.code == 2 and "--axis: invalid choice: 3" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"--axis must be one of 0, 1, 2 .* got -1"):
        segment_files([str(src)], tmp_path / "bad", axis=-1)
    assert not (tmp_path / "bad").exists()


def test_an_official_brats_checkpoint_file_from_the_api_and_the_command_line(tmp_path):
    """What the official training script writes for BraTS (in_ch 5: four modalities and the
    mask; `emasavedmodel_*.pt`, a bare state dict) loads as a 4-channel model and segments a
    case folder and a single 4-channel NIfTI, from the API and the command line alike, the
    NIfTI outputs carrying the inputs' affines."""
    import nibabel as nib
    import torch

    import dsd_fast
    from dsd_fast.cli import main
    from dsd_fast.volumes import segment_volume
    cases = tmp_path / "CASES"
    case = write_synthetic_brats_case(cases)
    stack = np.random.default_rng(5).uniform(0, 900, (20, 16, 3, 4)).astype(np.float32)
    single = save_nifti(cases / "stack4.nii.gz", stack, flipped_affine())
    net = tiny_official_medsegdiff(4).model
    ckpt = tmp_path / "emasavedmodel_0.9999_000100.pt"
    torch.save(net.state_dict(), ckpt)
    settings = {"image_size": 32, "num_heads": 1, "timesteps": 1000}
    pipe = dsd_fast.load(ckpt, **settings)              # the settings a .pt does not store
    assert pipe.channels == 4 and pipe.config.in_channels == 5
    out = tmp_path / "OUT"
    assert main(["segment", str(cases), "-o", str(out), "--checkpoint", str(ckpt),
                 *[f"--model-setting={k}={v}" for k, v in settings.items()], *ARGS]) == 0
    for key, source, ref in ((BRATS_CASE, case, case / f"{BRATS_CASE}_t1.nii.gz"),
                             ("stack4", single, single)):
        api = segment_volume(pipe, source, **FAST)
        written = nib.load(str(out / f"{key}_mask.nii.gz"))
        np.testing.assert_array_equal(np.asarray(written.dataobj), api.mask)
        np.testing.assert_allclose(written.affine, nib.load(str(ref)).affine, atol=1e-6)
