"""bench/bundle_model.py: the metadata it writes, half precision, and the files it refuses."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bundle_model import main
from safetensors import safe_open
from throughput_cases import perturbed_network

import dsd_fast


@pytest.fixture()
def model_file(tmp_path):
    return dsd_fast.save_model(perturbed_network("tiny_gray"), tmp_path / "best.safetensors")


def test_half_with_metadata(model_file, tmp_path):
    out = tmp_path / "bundled.safetensors"
    frontier = tmp_path / "frontier.json"
    frontier.write_text(json.dumps({"sources": ["ddti"], "limit": None, "rows": [
        {"steps": 5, "ensemble": 25, "spacing": "trailing", "tta": False, "ddti": 0.81234567,
         "ddti_below_0.5": 1, "seconds_per_image": 1.2}]}))
    main([str(model_file), str(out), "--half", "--frontier", str(frontier),
          "--set", "terms=research use",
          "--set", "training_data=DDTI train", "--sampler-defaults", "5,25,trailing",
          "--measured", "val 0.80 vs 0.79 at 25 x 5"])
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert meta["terms"] == "research use" and meta["training_data"] == "DDTI train"
    assert json.loads(meta["sampler_defaults"]) == {
        "steps": 5, "ensemble": 25, "spacing": "trailing",
        "measured": "val 0.80 vs 0.79 at 25 x 5"}
    assert dtypes == {torch.float16}
    assert json.loads(meta["frontier"]) == {"sources": ["ddti"], "limit": None, "rows": [
        {"steps": 5, "ensemble": 25, "spacing": "trailing", "tta": False, "ddti": 0.8123,
         "seconds_per_image": 1.2}]}
    assert out.stat().st_size < 0.6 * model_file.stat().st_size
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "best.safetensors", "bundled.safetensors", "frontier.json"]
    # the half file computes in float32 from float16-rounded weights: close to the original
    img = np.random.default_rng(0).integers(0, 255, (24, 24), dtype=np.uint8)
    full = dsd_fast.load(model_file).segment(img, steps=2, ensemble=2, seed=0)[0]
    half = dsd_fast.load(out).segment(img, steps=2, ensemble=2, seed=0)[0]
    assert np.abs(full.probability - half.probability).max() < 1e-2
    # segment() without steps/ensemble now uses the file's own setting
    assert dsd_fast.load(out).sampler_settings(None, None, None) == (5, 25, "trailing")


@pytest.mark.parametrize("args, message", [
    (["--set", "novalue"], "KEY=VALUE"),
    (["--sampler-defaults", "5,25", "--measured", "m"], "STEPS,MEMBERS,SPACING"),
    (["--sampler-defaults", "5,25,middle", "--measured", "m"], "leading or trailing"),
    (["--sampler-defaults", "5,25,trailing"], "--measured"),
    (["--sampler-defaults", "5000,5,trailing", "--measured", "m"],
     "5000 steps, the model has T = "),
    (["--set", "preprocessing={not json"], "would not load"),
])
def test_refuses_bad_arguments(model_file, tmp_path, args, message):
    out = tmp_path / "out.safetensors"
    with pytest.raises(SystemExit, match=message):
        main([str(model_file), str(out), *args])
    assert not out.exists()


def test_never_rewrites_its_source(model_file):
    before = model_file.read_bytes()
    with pytest.raises(SystemExit, match="differ"):
        main([str(model_file), str(model_file), "--half"])
    assert model_file.read_bytes() == before


def test_frontier_keeps_the_run_s_zoom_settings(tmp_path):
    """A frontier measured with --crop zoom (eval_experts.py --frontier records crop,
    zoom_outside and zoom_passes with the run) keeps them in the metadata: its Dice are
    zoom's, not the whole image's. None (the file's own, not given) is left out."""
    from bundle_model import frontier_rows
    rows = [{"steps": 3, "ensemble": 25, "spacing": "trailing", "disc": 0.89312,
             "seconds_per_image": 2.5}]
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps({"sources": ["disc"], "limit": None, "rows": rows,
                                "crop": "zoom", "zoom_outside": "background",
                                "zoom_passes": 3, "checkpoint": "x.safetensors"}))
    assert json.loads(frontier_rows(path)) == {
        "sources": ["disc"], "limit": None, "crop": "zoom", "zoom_outside": "background",
        "zoom_passes": 3, "rows": [{**rows[0], "disc": 0.8931}]}
    path.write_text(json.dumps({"sources": ["disc"], "limit": None, "rows": rows,
                                "crop": "zoom", "zoom_outside": None, "zoom_passes": None}))
    assert json.loads(frontier_rows(path)) == {
        "sources": ["disc"], "limit": None, "crop": "zoom",
        "rows": [{**rows[0], "disc": 0.8931}]}
