"""Several classes (#35 item 3): a model of K mask channels gives a label map and (K, H, W)
maps; the nested rule (the inner class wins); class names from the file's metadata; one
class stays exactly as it was (same noise draws, same result type)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dsd_fast
from dsd_fast.checkpoint import read_metadata, save_model
from dsd_fast.classes import (check_classes, class_regions, classes_from_metadata,
                              default_classes, label_map)
from dsd_fast.diffusion.ensemble import initial_noise, noise_seed, sample_ensemble
from dsd_fast.diffusion.schedule import Schedule
from dsd_fast.errors import CheckpointError
from dsd_fast.families import find_config
from dsd_fast.results import samples_to_class_result

from conftest import make_model


def two_class_pipe(seed: int = 0, config: str = "tiny_2class"):
    return dsd_fast.pipeline_from_network(make_model(config, seed))


def _image(h=23, w=31, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- the rules

def test_nested_labels_inner_class_wins():
    disc = np.zeros((6, 6), bool)
    disc[1:5, 1:5] = True
    cup = np.zeros((6, 6), bool)
    cup[2:4, 2:4] = True
    cup[0, 5] = True                             # a cup pixel outside the disc still wins
    prob = np.stack([disc * 0.9, cup * 0.8]).astype(np.float32)
    labels = label_map(prob > 0.5, nested=True, probability=prob)
    assert labels.dtype == np.uint8
    want = np.zeros((6, 6), np.uint8)
    want[disc] = 1
    want[cup] = 2
    np.testing.assert_array_equal(labels, want)
    regions = class_regions(labels, 2, nested=True)
    np.testing.assert_array_equal(regions[0], disc | cup)    # the disc region is label > 0
    np.testing.assert_array_equal(regions[1], cup)           # the cup is label 2


def test_exclusive_labels_most_probable_class():
    p = np.array([[[0.9, 0.6, 0.2]], [[0.7, 0.8, 0.3]]], np.float32)   # (2, 1, 3)
    labels = label_map(p > 0.5, nested=False, probability=p)
    np.testing.assert_array_equal(labels, [[1, 2, 0]])
    np.testing.assert_array_equal(class_regions(labels, 2, nested=False),
                                  [[[True, False, False]], [[False, True, False]]])


def test_class_names_and_metadata_checks():
    assert default_classes(1) == ("lesion",)
    assert default_classes(3) == ("class1", "class2", "class3")
    assert classes_from_metadata({}, 2) == (None, None)
    assert classes_from_metadata({"classes": '["disc", "cup"]', "classes_nested": "false"},
                                 2) == (("disc", "cup"), False)
    with pytest.raises(ValueError, match="2 class names .* 3 mask channels"):
        classes_from_metadata({"classes": '["disc", "cup"]'}, 3)
    with pytest.raises(ValueError, match="name output files"):
        check_classes(["disc", "../cup"], 2)
    with pytest.raises(ValueError, match="must differ"):
        check_classes(["a", "a"], 2)
    with pytest.raises(ValueError, match="true or false"):
        classes_from_metadata({"classes_nested": "yes"}, 2)


def test_class_result_from_hand_made_samples():
    # 2 members, 2 classes, 4 x 4: class 0 on the left half in both members, class 1 in
    # one member only on the top-left quarter (mean 0 -> probability 0.5, not > 0.5) and
    # in both on pixel (0, 0).
    s = -torch.ones(2, 2, 4, 4)
    s[:, 0, :, :2] = 1
    s[0, 1, :2, :2] = 1
    s[:, 1, 0, 0] = 1
    res = samples_to_class_result(s, (4, 4), ("disc", "cup"), nested=True,
                                  return_samples=True)
    assert res.probability.shape == res.std.shape == res.entropy.shape == (2, 4, 4)
    assert res.samples.shape == (2, 2, 4, 4) and res.samples.dtype == bool
    want = np.zeros((4, 4), np.uint8)
    want[:, :2] = 1
    want[0, 0] = 2
    np.testing.assert_array_equal(res.mask, want)
    np.testing.assert_allclose(res.probability[1, :2, :2], [[1, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(res.std[1, :2, :2], [[0, 0.5], [0.5, 0.5]])
    staple = samples_to_class_result(s, (4, 4), ("disc", "cup"), fusion="staple")
    assert staple.mask[0, 0] == 2 and staple.mask[3, 3] == 0 and staple.mask[3, 0] == 1
    with pytest.raises(ValueError, match="2 mask channels for 3 classes"):
        samples_to_class_result(s, (4, 4), ("a", "b", "c"))


# ----------------------------------------------------------------------------- noise

def test_one_channel_noise_is_the_old_draw():
    keys, e, size, seed = ["a.png", 7, "z"], 3, 8, 11
    old = torch.empty(len(keys) * e, 1, size, size)       # the draw before classes existed
    for i, key in enumerate(keys):
        gen = torch.Generator().manual_seed(noise_seed(seed, key))
        old[i * e:(i + 1) * e].normal_(generator=gen)
    assert torch.equal(initial_noise(keys, e, size, seed), old)
    assert torch.equal(initial_noise(keys, e, size, seed, channels=1), old)


def test_several_channel_noise_is_per_image_and_chain_major():
    two = initial_noise(["a", "b"], 3, 8, 5, channels=2)
    assert two.shape == (6, 2, 8, 8)
    alone = initial_noise(["b"], 3, 8, 5, channels=2)
    assert torch.equal(two[3:], alone)                    # independent of the batch
    gen = torch.Generator().manual_seed(noise_seed(5, "a"))
    assert torch.equal(two[:3], torch.empty(3, 2, 8, 8).normal_(generator=gen))


def test_sample_ensemble_shapes():
    class Zero(torch.nn.Module):          # predicts no noise: x follows the DDIM drift only
        def forward(self, x, image, t):
            return torch.zeros_like(x)
    img = torch.rand(2, 3, 8, 8)
    sched = Schedule.published()
    one = sample_ensemble(Zero(), sched, img, 2, 3, 0)
    assert one.shape == (2, 3, 8, 8)
    two = sample_ensemble(Zero(), sched, img, 2, 3, 0, mask_channels=2)
    assert two.shape == (2, 3, 2, 8, 8)
    tta = sample_ensemble(Zero(), sched, img, 2, 3, 0, mask_channels=2, tta=True)
    assert tta.shape == (2, 3, 2, 8, 8)
    with pytest.raises(ValueError, match="mask_channels"):
        sample_ensemble(Zero(), sched, img, 2, 3, 0, mask_channels=0)


# ----------------------------------------------------------------------------- the API

def test_two_class_model_gives_labels_and_per_class_maps():
    pipe = two_class_pipe()
    assert pipe.mask_channels == 2 and pipe.classes == ("class1", "class2") and pipe.nested
    img = _image()
    res = pipe.segment([img], steps=2, ensemble=3, noise_keys=["k"], return_samples=True)[0]
    assert res.mask.shape == (23, 31) and res.mask.dtype == np.uint8
    assert set(np.unique(res.mask)) <= {0, 1, 2}
    assert res.probability.shape == res.std.shape == (2, 23, 31)
    assert res.samples.shape == (3, 2, 23, 31)
    assert res.classes == ("class1", "class2")
    # the label map is the nested rule on the per-class probabilities
    np.testing.assert_array_equal(res.mask, label_map(res.probability > 0.5, True,
                                                      res.probability))
    # the same image and key: the same result, whatever shares the batch (to float
    # rounding: a batch of two runs other convolution kernels than a batch of one)
    again = pipe.segment([_image(seed=1), img], steps=2, ensemble=3,
                         noise_keys=["x", "k"])[1]
    np.testing.assert_array_equal(again.mask, res.mask)
    np.testing.assert_allclose(again.probability, res.probability, atol=1e-5)


def test_two_class_postprocess_staple_and_crf():
    pipe = two_class_pipe()
    img = _image()
    res = pipe.segment([img], steps=2, ensemble=3, noise_keys=["k"],
                       postprocess="largest_fill", fusion="staple")[0]
    assert res.fusion == "staple+largest_fill" and res.mask.dtype == np.uint8
    for region in res.class_regions():            # each class one component without holes
        from scipy import ndimage
        assert ndimage.label(region, structure=np.ones((3, 3)))[1] <= 1
        np.testing.assert_array_equal(ndimage.binary_fill_holes(region), region)
    with pytest.raises(ValueError, match="not available for a model of 2 classes"):
        pipe.segment([img], steps=2, ensemble=2, refine="crf")


def test_classes_travel_in_the_model_file(tmp_path):
    pipe = two_class_pipe()
    pipe.class_names, pipe.nested_classes = ("disc", "cup"), True
    path = save_model(pipe, tmp_path / "m.safetensors")
    meta = read_metadata(path)
    assert json.loads(meta["classes"]) == ["disc", "cup"] and meta["classes_nested"] == "true"
    loaded = dsd_fast.load(path)
    assert loaded.classes == ("disc", "cup") and loaded.nested
    res = loaded.segment([_image()], steps=2, ensemble=2, noise_keys=["k"])[0]
    assert res.classes == ("disc", "cup")
    # a plain network of two channels saves its default names
    bare = save_model(two_class_pipe().model, tmp_path / "bare.safetensors")
    assert json.loads(read_metadata(bare)["classes"]) == ["class1", "class2"]


def test_wrong_class_metadata_is_a_checkpoint_error(tmp_path):
    from safetensors.torch import load_file, save_file
    path = save_model(two_class_pipe(), tmp_path / "m.safetensors")
    meta = read_metadata(path)
    meta["classes"] = json.dumps(["disc", "cup", "rim"])
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(path), bad, metadata=meta)
    with pytest.raises(CheckpointError, match="3 class names"):
        dsd_fast.load(bad)


def test_binary_model_keeps_its_api(tiny_model):
    pipe = dsd_fast.pipeline_from_network(tiny_model)
    assert pipe.classes == ("lesion",) and pipe.mask_channels == 1
    res = pipe.segment([_image()], steps=2, ensemble=2, return_samples=True)[0]
    assert res.mask.dtype == bool and res.mask.shape == (23, 31)
    assert res.probability.shape == res.std.shape == (23, 31)
    assert res.samples.shape == (2, 23, 31) and res.classes is None
    assert "classes" not in pipe.file_contents()[1]


@pytest.mark.parametrize("config", ["tiny_2class", "msd_tiny_sc"])
def test_two_class_fast_path_matches_the_reference(config):
    """Both families with K mask channels (DermoSegDiff's channels_x, med-seg-diff-pytorch's
    mask_channels, self-conditioned): the fast network gives the reference's maps."""
    import dataclasses
    fam, cfg = find_config(config)
    if fam.mask_channels(cfg) == 1:
        cfg = dataclasses.replace(cfg, mask_channels=2)
    torch.manual_seed(0)
    pipe = dsd_fast.pipeline_from_network(fam.build_reference(cfg).eval())
    assert pipe.mask_channels == 2
    ref = pipe.segment([_image()], steps=2, ensemble=2, backend="reference")[0]
    fast = pipe.segment([_image()], steps=2, ensemble=2, backend="fast")[0]
    assert ref.probability.shape == (2, 23, 31)
    np.testing.assert_allclose(fast.probability, ref.probability, atol=1e-5)
