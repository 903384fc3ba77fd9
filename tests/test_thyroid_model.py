"""The bundled `thyroid-ultrasound` model: it loads by name as a 1-channel DermoSegDiff with
its own sampler defaults and terms, and segments a DDTI val image sensibly.

The Dice floor catches a broken bundle (wrong weights, wrong preprocessing, a lost channel
conversion), it is not a benchmark: MODEL_CARD.md has the measured validation figures.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import dsd_fast
from dsd_fast.api import WEIGHTS_DIR
from dsd_fast.checkpoint import read_metadata
from dsd_fast.images import load_mask
from dsd_fast.metrics import dice

FILE = WEIGHTS_DIR / "thyroid-ultrasound.safetensors"
DDTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ddti"
# Measured with the bundled file at its defaults (25 members x 3 trailing steps, seed 0,
# noise keyed by list position, bench/eval_sources.py): 101_1_1 0.821, 101_1_2 0.919.
DICE_FLOOR = 0.75

pytestmark = pytest.mark.skipif(not FILE.exists(), reason="thyroid-ultrasound not bundled")


def test_loads_by_name_as_a_grayscale_model_with_its_defaults():
    pipe = dsd_fast.load("thyroid-ultrasound")
    assert pipe.family.name == "dermosegdiff" and pipe.channels == 1
    assert pipe.sampler_settings() == (3, 25, "trailing")
    meta = read_metadata(FILE)
    assert "DDTI" in meta["terms"] and "DDTI" in meta["training_data"]
    frontier = json.loads(meta["frontier"])
    assert frontier["sources"] == ["ddti"] and len(frontier["rows"]) >= 4
    assert FILE.stat().st_size < 6 * 2 ** 20          # float16


@pytest.mark.skipif(not DDTI.is_dir(), reason="../shared/data/ddti is not beside this checkout")
def test_segments_ddti_val_images():
    pipe = dsd_fast.load("thyroid-ultrasound")
    for name in ("101_1_1", "101_1_2"):
        res = pipe.segment([DDTI / "images" / f"{name}.png"], seed=0, noise_keys=[0])[0]
        truth = load_mask(DDTI / "masks" / f"{name}.png").numpy()
        assert res.mask.shape == truth.shape == (300, 300)
        assert dice(np.asarray(res.mask), truth) > DICE_FLOOR, name
