"""postprocess.py on masks whose answer is known by construction."""
import numpy as np
import pytest

from dsd_fast.postprocess import METHODS, largest_component, postprocess_mask


def ring_with_island():
    """A 20 x 20 square ring (hole 8 x 8 inside) plus a 3 x 3 island and one pixel touching
    the big component only diagonally (8-connected: part of it)."""
    m = np.zeros((40, 40), bool)
    m[5:25, 5:25] = True
    m[11:19, 11:19] = False              # the hole
    m[30:33, 30:33] = True               # the island
    m[25, 25] = True                     # diagonal neighbour of (24, 24)
    return m


def test_each_method_on_a_known_mask():
    m = ring_with_island()
    ring, hole, island = m.sum() - 9 - 1, 64, 9
    assert postprocess_mask(m, None).sum() == m.sum()
    assert postprocess_mask(m, "fill").sum() == m.sum() + hole
    largest = postprocess_mask(m, "largest")
    assert largest.sum() == ring + 1 and not largest[30:33, 30:33].any() and largest[25, 25]
    both = postprocess_mask(m, "largest_fill")
    assert both.sum() == ring + 1 + hole and both[11:19, 11:19].all()
    assert m.sum() == ring + island + 1                    # the input is untouched


def test_background_touching_the_border_is_not_a_hole():
    m = np.zeros((10, 10), bool)
    m[:, 3] = m[:, 6] = True             # two bars: the strip between them reaches the border
    assert postprocess_mask(m, "fill").sum() == m.sum()


def test_empty_and_full_masks_and_ties():
    for method in METHODS:
        assert not postprocess_mask(np.zeros((5, 7), bool), method).any()
        assert postprocess_mask(np.ones((5, 7), bool), method).all()
    m = np.zeros((5, 9), bool)
    m[1:3, 1:3] = m[1:3, 5:7] = True     # equal sizes: the first in raster order stays
    kept = largest_component(m)
    assert kept[1:3, 1:3].all() and not kept[1:3, 5:7].any()


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="postprocess must be None or one of"):
        postprocess_mask(np.zeros((4, 4), bool), "biggest")
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        postprocess_mask(np.zeros((2, 4, 4), bool), "fill")


# ------------------------------------------------------------------ through segment() and the CLI
def tiny_pipeline(postprocess_default=None):
    import torch

    from dsd_fast import DermoSegDiff, get_config, pipeline_from_network
    torch.manual_seed(0)
    pipe = pipeline_from_network(DermoSegDiff(get_config("tiny")).eval())
    pipe.postprocess_default = postprocess_default
    return pipe


def test_segment_cleans_only_the_mask():
    from scipy import ndimage
    pipe = tiny_pipeline()
    image = np.random.default_rng(1).random((40, 48, 3)).astype(np.float32)
    kw = dict(steps=3, ensemble=2, seed=0)
    (raw,) = pipe.segment(image, postprocess=None, **kw)
    # an untrained network's mask is speckle: many islands, so "largest" has work to do
    assert ndimage.label(raw.mask, structure=np.ones((3, 3)))[1] >= 2
    for method in METHODS:
        (res,) = pipe.segment(image, postprocess=method, **kw)
        np.testing.assert_array_equal(res.mask, postprocess_mask(raw.mask, method))
        np.testing.assert_array_equal(res.probability, raw.probability)
        assert res.fusion == f"mean+{method}"
    # "auto": the pipeline's own setting (a model file's metadata), none by default
    (auto,) = pipe.segment(image, **kw)
    np.testing.assert_array_equal(auto.mask, raw.mask)
    (auto,) = tiny_pipeline("largest").segment(image, **kw)
    np.testing.assert_array_equal(auto.mask, postprocess_mask(raw.mask, "largest"))
    (off,) = tiny_pipeline("largest").segment(image, postprocess="none", **kw)
    np.testing.assert_array_equal(off.mask, raw.mask)
    with pytest.raises(ValueError, match="postprocess must be"):
        pipe.segment(image, postprocess="biggest", **kw)


def test_the_setting_travels_in_the_model_file(tmp_path):
    import dsd_fast
    from dsd_fast.checkpoint import CheckpointError, save_model
    pipe = tiny_pipeline()
    path = save_model(pipe, tmp_path / "m.safetensors", extra_metadata={"postprocess": "largest"})
    assert dsd_fast.load(path).postprocess_default == "largest"
    assert dsd_fast.load(save_model(pipe, tmp_path / "n.safetensors")).postprocess_default is None
    bad = save_model(pipe, tmp_path / "b.safetensors", extra_metadata={"postprocess": "smooth"})
    with pytest.raises(CheckpointError, match="postprocess metadata 'smooth'"):
        dsd_fast.load(bad)


def test_the_command_line_resolves_auto_from_the_file_and_checks_the_value(tmp_path):
    from dsd_fast.checkpoint import save_model
    from dsd_fast.cli.errors import UsageError
    from dsd_fast.cli.run import BatchOptions, resolve_run_sampling
    path = save_model(tiny_pipeline(), tmp_path / "m.safetensors",
                      extra_metadata={"postprocess": "largest_fill"})
    opts = BatchOptions(output=tmp_path / "out", checkpoint=str(path))
    resolve_run_sampling(opts, None)
    assert opts.postprocess == "largest_fill"
    opts = BatchOptions(output=tmp_path / "out", checkpoint=str(path), steps=3, ensemble=2,
                        spacing="leading", postprocess="none")
    resolve_run_sampling(opts, None)
    assert opts.postprocess is None
    with pytest.raises(UsageError, match="--postprocess must be None or one of"):
        BatchOptions(output=tmp_path / "out", postprocess="biggest")
