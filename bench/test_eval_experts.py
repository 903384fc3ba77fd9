"""bench/eval_experts.py: the box, the calibration error, and a run on a synthetic set."""
from __future__ import annotations

import json

import numpy as np
import pytest
from eval_experts import calibration, experts_box, score, val_items
from PIL import Image
from throughput_cases import perturbed_network

import dsd_fast
from dsd_fast.classes import class_metadata


def test_experts_box_enlarged_and_clipped():
    disc = np.zeros((40, 50), np.uint8)
    disc[10:20, 30:40] = 64                  # 10 x 10, any expert
    assert experts_box(disc) == (slice(5, 25), slice(25, 45))
    disc[:] = 0
    disc[0:4, 46:50] = 255                   # at the corner: clipped
    assert experts_box(disc) == (slice(0, 6), slice(44, 50))
    assert experts_box(np.zeros((4, 4))) == (slice(None), slice(None))


def test_calibration_exact():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    a = np.array([0.0, 0.5, 1.0, 1.0])
    c = calibration(p, a)
    # bin 0: mean p 0.05, mean a 0.25, share 0.5; bin 9: mean p 0.95, mean a 1.0, share 0.5
    assert c["ece"] == pytest.approx(0.5 * 0.2 + 0.5 * 0.05)
    assert c["reliability"][0] == pytest.approx((0.05, 0.25, 0.5))
    assert c["reliability"][5] is None
    # probabilities equal to the agreement they predict: calibrated
    assert calibration(a * 0.999, a * 0.999)["ece"] == pytest.approx(0.0, abs=1e-12)


class _Result:
    def __init__(self, probability):
        self.probability = probability

    def class_regions(self):
        return self.probability > 0.5


class _KnownMaps:
    """A stand-in segmenter: its ensemble returns the experts' agreement itself, its single
    sample the experts' majority (0 / 1)."""
    classes = ("disc", "cup")

    def __init__(self, agreement):
        self.agreement = agreement

    def segment(self, images, steps, ensemble, seed, noise_keys, **options):
        p = self.agreement if ensemble > 1 else (self.agreement > 0.5).astype(np.float32)
        return [_Result(p)]


def _one_image_set(tmp_path, disc, cup):
    """A set of one 20 x 20 black image "a" with the experts' maps `disc` and `cup` (uint8);
    returns the folder and the agreement maps (2, 20, 20) in [0, 1]."""
    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(disc).save(data / "masks" / "a_disc.png")
    Image.fromarray(cup).save(data / "masks" / "a_cup.png")
    (data / "val.txt").write_text("a\n")
    return data, np.stack([disc, cup]).astype(np.float32) / 255


def test_score_exact_on_known_maps(tmp_path):
    disc, cup = np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)
    disc[5:15, 5:15] = 255
    disc[5, 5:15] = 64                        # one expert only: the row the majority drops
    cup[8:12, 8:12] = 191                     # three experts
    data, agreement = _one_image_set(tmp_path, disc, cup)
    out = score(_KnownMaps(agreement), val_items(data, None), data, steps=2, ensemble=5)
    disc_s, cup_s = out["summary"]["disc"], out["summary"]["cup"]
    # the box (disc 10 x 10, half its size each side) is the whole 20 x 20 image
    assert disc_s["mad_ens"] == 0 and cup_s["mad_ens"] == 0
    assert disc_s["calibration_ens"]["ece"] == pytest.approx(0, abs=1e-7)
    # one sample: 10 pixels at 1/4 called 0, 16 pixels at 3/4 called 1, over 400
    assert disc_s["mad_one"] == pytest.approx(10 * (64 / 255) / 400)
    assert cup_s["mad_one"] == pytest.approx(16 * (1 - 191 / 255) / 400)
    assert disc_s["calibration_one"]["ece"] == pytest.approx(10 * (64 / 255) / 400)
    assert disc_s["dice_mean"] == 1.0 and cup_s["dice_mean"] == 1.0


def test_score_on_a_synthetic_set(tmp_path):
    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(
            data / "images" / f"{i}.jpg")
        disc, cup = np.zeros((24, 28), np.uint8), np.zeros((24, 28), np.uint8)
        disc[6:18, 8:20], cup[9:15, 11:17] = 255, 191
        Image.fromarray(disc).save(data / "masks" / f"{i}_disc.png")
        Image.fromarray(cup).save(data / "masks" / f"{i}_cup.png")
    (data / "val.txt").write_text("a\nb\n")
    path = dsd_fast.save_model(perturbed_network("tiny_2class"), tmp_path / "m.safetensors",
                               extra_metadata=class_metadata(("disc", "cup"), nested=True))
    pipe = dsd_fast.load(path)
    out = score(pipe, val_items(data, None), data, steps=2, ensemble=3)
    assert [r["id"] for r in out["rows"]] == ["a", "b"]
    for c in ("disc", "cup"):
        s = out["summary"][c]
        assert 0 <= s["dice_mean"] <= 1 and 0 <= s["mad_ens"] <= 1
        assert 0 <= s["calibration_ens"]["ece"] <= 1
    json.dumps(out)                          # the --out file is plain JSON


def test_frontier_rows_per_class_in_the_bundle_format(tmp_path):
    from bundle_model import frontier_rows
    from eval_experts import class_dice_frontier
    disc, cup = np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)
    disc[5:15, 5:15], cup[8:12, 8:12] = 255, 64          # the cup: one expert, not majority
    data, agreement = _one_image_set(tmp_path, disc, cup)
    run = class_dice_frontier(_KnownMaps(agreement), val_items(data, None), data,
                              [(2, 1), (3, 5)], spacing="trailing", crop=None)
    assert run["sources"] == ["disc", "cup"]
    assert [(r["steps"], r["ensemble"]) for r in run["rows"]] == [(2, 1), (3, 5)]
    # the known maps' regions equal the majority: disc 1; the empty cup against an empty
    # majority counts as agreement (metrics.dice of two empty masks)
    assert all(r["disc"] == 1.0 and r["cup"] == 1.0 for r in run["rows"])
    assert all(r["seconds_per_image"] >= 0 and r["spacing"] == "trailing" for r in run["rows"])
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(run))
    kept = json.loads(frontier_rows(path))
    assert kept["sources"] == ["disc", "cup"] and kept["rows"][1]["cup"] == 1.0
