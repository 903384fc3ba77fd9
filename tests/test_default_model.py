"""The bundled default model: it loads, and it segments a bundled sample sensibly.

The Dice floor catches a broken bundle (wrong weights, wrong preprocessing), it is not a
benchmark: MODEL_CARD.md has the measured validation figures.
"""
import inspect
from pathlib import Path

import pytest

import dsd_fast
from dsd_fast import get_config, segment
from dsd_fast.api import DEFAULT_MODEL_PATH
from dsd_fast.metrics import dice

SAMPLES = Path(__file__).resolve().parents[1] / "dsd_fast" / "samples"
# Measured with the bundled weights (PH2 + HAM10000, step 18,500; steps 10, ensemble 3, seed
# 0, clipped DDIM, noise keyed by the image's content) on IMD009: Dice 0.830 (IMD019 0.888,
# IMD031 0.973). The previous, PH2-only weights gave 0.861 there, and 0.903 with the noise
# keyed by list position: the draw of initial noise alone moves one image's Dice by ~0.04 at
# this small ensemble. The floor sits below these so only a broken bundle fails.
DICE_FLOOR = 0.80

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.exists(),
                                reason="no default model bundled yet")


def test_bundled_model_loads_with_its_config():
    pipe = dsd_fast.load()
    assert pipe.family.name == "dermosegdiff" and pipe.config == get_config("default")
    assert pipe.schedule.T == 250 and pipe.preprocessing.image_size == 64
    assert DEFAULT_MODEL_PATH.stat().st_size < 20 * 2 ** 20


def test_bundled_model_says_its_fast_setting_and_terms():
    import json
    from dsd_fast.checkpoint import read_metadata
    meta = read_metadata(DEFAULT_MODEL_PATH)
    fast = json.loads(meta["recommended_fast"])
    assert fast["steps"] == 5 and fast["spacing"] == "trailing"
    segment_kwargs = {k: fast[k] for k in ("steps", "spacing")}
    dsd_fast.SegmentOptions(**segment_kwargs)           # names and values segment() takes
    assert "non-commercial" in meta["terms"] and "HAM10000" in meta["training_data"]


def test_bundled_model_samples_25_members_of_5_trailing_steps_by_default(tmp_path):
    """segment()'s and the CLI's default for this model (MODEL_CARD.md: at the cost of 5 x 25
    it gives PH2 val 0.931 vs 0.922, HAM10000 val 0.893 vs 0.880)."""
    from dsd_fast.cli.run import BatchOptions, resolve_run_sampling
    assert dsd_fast.load().sampler_settings() == (5, 25, "trailing")
    opts = BatchOptions(output=tmp_path / "out")
    resolve_run_sampling(opts, None)
    assert (opts.steps, opts.ensemble, opts.spacing) == (5, 25, "trailing")
    opts = BatchOptions(output=tmp_path / "out", steps=25)
    resolve_run_sampling(opts, None)
    assert (opts.steps, opts.ensemble, opts.spacing) == (25, 5, "leading")


def test_bundled_model_keeps_the_largest_lesion_component_by_default(tmp_path):
    """Its metadata's "postprocess" (MODEL_CARD.md: HAM10000 val +0.004 per image, 86 wins
    and 5 losses of 502, PH2 unchanged): segment() and the CLI apply it unless told not to."""
    from dsd_fast.cli.run import BatchOptions, resolve_run_sampling
    pipe = dsd_fast.load()
    assert pipe.postprocess_default == "largest"
    opts = BatchOptions(output=tmp_path / "out")
    resolve_run_sampling(opts, None)
    assert opts.postprocess == "largest"
    (res,) = pipe.segment(SAMPLES / "IMD009.png", steps=2, ensemble=2)
    assert res.fusion == "mean+largest"


def test_bundled_model_segments_a_sample(ph2_dir):
    from dsd_fast.images import load_mask
    res = segment(SAMPLES / "IMD009.png", steps=10, ensemble=3)[0]   # model=None: bundled
    gt = load_mask(ph2_dir / "masks" / "IMD009.png").numpy()
    assert res.mask.shape == gt.shape
    assert dice(res.mask, gt) >= DICE_FLOOR


MSD_PATH = DEFAULT_MODEL_PATH.parent / "medsegdiff.safetensors"


@pytest.mark.skipif(not MSD_PATH.exists(), reason="no MedSegDiff model bundled")
def test_bundled_medsegdiff_model_loads_by_name():
    from dsd_fast.families.medsegdiff import MSD_CONFIGS
    pipe = dsd_fast.load("medsegdiff")
    assert dsd_fast.load("medsegdiff-ph2").config == pipe.config      # the older name
    assert pipe.family.name == "medsegdiff" and pipe.config == MSD_CONFIGS["msd_ph2_64_x0"]
    assert pipe.config.objective == "pred_x0"
    assert pipe.preprocessing.image_size == 64 and pipe.schedule.T == 1000
    assert MSD_PATH.stat().st_size < 20 * 2 ** 20
    from dsd_fast.checkpoint import read_metadata
    meta = read_metadata(MSD_PATH)
    assert "non-commercial" in meta["terms"] and "HAM10000" in meta["training_data"]
    assert pipe.sampler_settings() == (25, 5, "leading")     # no sampler_defaults: classic


@pytest.mark.skipif(not MSD_PATH.exists(), reason="no MedSegDiff model bundled")
def test_bundled_medsegdiff_model_segments_a_sample(ph2_dir):
    # Measured with the bundled weights (pred_x0, PH2 + HAM10000, step 13,000; steps 10,
    # ensemble 3, seed 0, noise keyed by content): IMD009 0.834, IMD019 0.883, IMD031 0.948
    # (the PH2-only step-7,000 weights: 0.843, 0.940, 0.962). The floor catches a broken
    # bundle (wrong weights, objective or preprocessing); it is not a benchmark.
    from dsd_fast.images import load_mask
    res = segment(SAMPLES / "IMD009.png", steps=10, ensemble=3, model="medsegdiff")[0]
    gt = load_mask(ph2_dir / "masks" / "IMD009.png").numpy()
    assert dice(res.mask, gt) >= DICE_FLOOR
