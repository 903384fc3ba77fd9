"""The bundled one-class models beyond dermoscopy (#36): `thyroid-ultrasound`,
`breast-ultrasound` and `polyp`. Each loads by name with its family, channel count, sampler
defaults, terms and frontier from its metadata, and segments two val images of its data set
sensibly.

The Dice floor catches a broken bundle (wrong weights, wrong preprocessing, a lost channel
conversion); it is not a benchmark: MODEL_CARD.md has the measured validation figures.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import dsd_fast
from dsd_fast.api import WEIGHTS_DIR
from dsd_fast.checkpoint import read_metadata
from dsd_fast.images import load_mask
from dsd_fast.metrics import dice

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Bundled:
    name: str
    family: str
    channels: int
    defaults: tuple                  # pipe.sampler_settings(): steps, members, spacing
    data_set: str                    # the ../shared/data folder (and frontier source)
    cite: str                        # what its terms and training data must name
    images: tuple                    # (folder, val id, image suffix): two val images
    floor: float


# Each floor sits below the two images' Dice measured with the bundled file at its
# defaults (seed 0, noise keyed by list position, bench/eval_sources.py), noted per model.
MODELS = [
    # 101_1_1 0.821, 101_1_2 0.919
    Bundled("thyroid-ultrasound", "dermosegdiff", 1, (3, 25, "trailing"), "ddti", "DDTI",
            (("ddti", "101_1_1", ".png"), ("ddti", "101_1_2", ".png")), 0.75),
    # benign_100 0.932, benign_101 0.901 (the float16 file)
    Bundled("breast-ultrasound", "dermosegdiff", 1, (5, 25, "trailing"), "busi", "BUSI",
            (("busi", "benign_100", ".png"), ("busi", "benign_101", ".png")), 0.8),
    # Kvasir-SEG cju13cgqmnhwn0988yrainhcp 0.971, CVC-ClinicDB 432 0.911 (the float16 file)
    Bundled("polyp", "dermosegdiff", 3, (5, 25, "trailing"), "kvasir_seg", "Kvasir-SEG",
            (("kvasir_seg", "cju13cgqmnhwn0988yrainhcp", ".jpg"), ("cvc_clinicdb", "432", ".jpg")),
            0.8),
]


def _bundled_file(model):
    file = WEIGHTS_DIR / f"{model.name}.safetensors"
    if not file.exists():
        pytest.skip(f"{model.name} not bundled")
    return file


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_loads_by_name_with_its_defaults_terms_and_frontier(model):
    file = _bundled_file(model)
    pipe = dsd_fast.load(model.name)
    assert pipe.family.name == model.family and pipe.channels == model.channels
    assert pipe.sampler_settings() == model.defaults
    meta = read_metadata(file)
    assert model.cite in meta["terms"] and model.cite in meta["training_data"]
    frontier = json.loads(meta["frontier"])
    assert model.data_set in frontier["sources"] and len(frontier["rows"]) >= 4
    assert file.stat().st_size < 8 * 2 ** 20          # float16


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_segments_two_val_images(model):
    _bundled_file(model)
    for folder in {folder for folder, _, _ in model.images}:
        if not (DATA / folder).is_dir():
            pytest.skip(f"../shared/data/{folder} is not beside this checkout")
    pipe = dsd_fast.load(model.name)
    for folder, name, suffix in model.images:
        res = pipe.segment([DATA / folder / "images" / f"{name}{suffix}"], seed=0,
                           noise_keys=[0])[0]
        truth = load_mask(DATA / folder / "masks" / f"{name}.png").numpy()
        assert res.mask.shape == truth.shape
        assert dice(np.asarray(res.mask), truth) > model.floor, (model.name, name)
