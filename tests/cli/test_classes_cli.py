"""The command line with a model of several classes (#35 item 3): `<name>_labels.png` equal to
the API's label map for the same file, options and noise key, per-class probability and
uncertainty maps, per-class areas in results.json, `--gt` and `dsd-fast eval --classes`
scored per class against label maps or Drishti-GS's per-class soft masks."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

import dsd_fast
from dsd_fast.classes import class_regions
from dsd_fast.cli import main
from dsd_fast.metrics import dice

from conftest import make_model, seeded_network

FAST = ["--steps", "2", "--ensemble", "3", "-q"]


def _model_file(tmp_path, classes=("disc", "cup")) -> str:
    pipe = dsd_fast.pipeline_from_network(make_model("tiny_2class", seed=3))
    pipe.class_names = classes
    return str(dsd_fast.save_model(pipe, tmp_path / "two.safetensors"))


def _images(tmp_path, n=2) -> list[str]:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        img = rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)
        img[8:22, 10:30] //= 3
        paths.append(folder / f"eye{i}.png")
        Image.fromarray(img).save(paths[-1])
    return [str(p) for p in paths]


def test_the_command_line_writes_the_api_label_map_and_per_class_maps(tmp_path):
    model = _model_file(tmp_path)
    image = _images(tmp_path, 1)[0]
    out = tmp_path / "out"
    assert main(["segment", image, "-o", str(out), "--checkpoint", model, *FAST]) == 0
    res = dsd_fast.load(model).segment(image, steps=2, ensemble=3, noise_keys=["eye0"],
                                       batch_size=1)[0]
    labels = np.array(Image.open(out / "eye0_labels.png"))
    assert labels.dtype == np.uint8 and labels.shape == (30, 44)
    np.testing.assert_array_equal(labels, res.mask)
    for c, name in enumerate(("disc", "cup")):
        prob = np.array(Image.open(out / f"eye0_prob_{name}.png")) / 65535
        np.testing.assert_allclose(prob, res.probability[c], atol=1 / 65535)
        heat = np.array(Image.open(out / f"eye0_uncertainty_{name}.png"))
        assert heat.shape == (30, 44, 3)
    assert not (out / "eye0_mask.png").exists() and not (out / "eye0_prob.png").exists()
    overlay = np.array(Image.open(out / "eye0_overlay.png"))
    assert overlay.shape == (30, 44, 3)
    doc = json.loads((out / "results.json").read_text())
    rec = doc["images"][0]
    assert set(rec["classes"]) == {"disc", "cup"}
    regions = class_regions(res.mask, 2, True)
    for c, name in enumerate(("disc", "cup")):
        assert rec["classes"][name]["area_px"] == int(regions[c].sum())
        assert rec["classes"][name]["mean_uncertainty"] == \
            pytest.approx(float(res.std[c].mean()), rel=1e-6)
    assert rec["area_px"] == int((res.mask > 0).sum())
    with open(out / "results.csv") as f:
        row = next(csv.DictReader(f))
    assert int(row["area_px_cup"]) == int(regions[1].sum())
    # a second run resumes: the image is finished (its label map and class maps exist)
    assert main(["segment", image, "-o", str(out), "--checkpoint", model, *FAST]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["counts"]["skipped"] == 1 and doc["counts"]["segmented"] == 0


def test_gt_scores_each_class_from_soft_class_masks_and_label_maps(tmp_path):
    model = _model_file(tmp_path)
    images = _images(tmp_path, 2)
    out = tmp_path / "out"
    gt = tmp_path / "gt"
    gt.mkdir()
    disc = np.zeros((30, 44), np.uint8)
    disc[5:25, 8:36] = 255
    disc[5, 8:36] = 64                       # one expert of four: outside the majority
    cup = np.zeros((30, 44), np.uint8)
    cup[10:20, 15:28] = 191
    Image.fromarray(disc).save(gt / "eye0_disc.png")       # Drishti-GS's layout
    Image.fromarray(cup).save(gt / "eye0_cup.png")
    label = np.zeros((30, 44), np.uint8)                   # a label map for eye1
    label[disc > 127] = 1
    label[cup > 127] = 2
    Image.fromarray(label).save(gt / "eye1.png")
    assert main(["segment", *images, "-o", str(out), "--checkpoint", model, "--gt", str(gt),
                 "--no-report", *FAST]) == 0
    doc = json.loads((out / "results.json").read_text())
    truth = np.stack([disc > 127, cup > 127])
    for rec in doc["images"]:
        pred = np.array(Image.open(out / f"{rec['key']}_labels.png"))
        regions = class_regions(pred, 2, True)
        m = rec["metrics"]
        for c, name in enumerate(("disc", "cup")):
            assert m[f"dice_{name}"] == pytest.approx(dice(regions[c], truth[c]))
        assert m["dice"] == pytest.approx((m["dice_disc"] + m["dice_cup"]) / 2)
    assert set(doc["metrics_summary"]["classes"]) == {"disc", "cup"}
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "dice_cup" in rows[0]
    # dsd-fast eval scores the written label maps the same way
    ev = tmp_path / "ev"
    assert main(["eval", "--pred", str(out), "--gt", str(gt), "--classes", "disc+cup",
                 "--out", str(ev)]) == 0
    with open(ev / "metrics.csv") as f:
        ev_rows = {r["image"]: r for r in csv.DictReader(f)}
    for rec in doc["images"]:
        assert float(ev_rows[rec["key"]]["dice_cup"]) == \
            pytest.approx(rec["metrics"]["dice_cup"], abs=1e-6)


def test_eval_refuses_a_binary_mask_as_a_label_map(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    Image.fromarray(np.ones((4, 4), np.uint8)).save(pred / "a_labels.png")
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(gt / "a.png")
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--classes", "disc+cup",
                 "--out", str(tmp_path)]) == 2
    assert "not a label map of 2 classes" in capsys.readouterr().err


def test_a_binary_model_writes_todays_files(tmp_path):
    model = str(dsd_fast.save_model(seeded_network("tiny_ff"), tmp_path / "one.safetensors"))
    image = _images(tmp_path, 1)[0]
    out = tmp_path / "out"
    assert main(["segment", image, "-o", str(out), "--checkpoint", model, "--no-report",
                 *FAST]) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert names == ["eye0_mask.png", "eye0_overlay.png", "eye0_prob.png",
                     "eye0_uncertainty.png", "results.csv", "results.json"]
    assert "classes" not in json.loads((out / "results.json").read_text())["images"][0]
