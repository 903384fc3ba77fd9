"""segment() and Pipeline: input handling, outputs at the original size, determinism,
reproducibility by content, every error."""
import numpy as np
import pytest
import torch
from PIL import Image

from dsd_fast import ImageInputError, Pipeline, pipeline_from_network, save_model, segment
from dsd_fast.diffusion import Schedule, sample_ensemble
from dsd_fast.images import to_chw
from dsd_fast.preprocess import content_key, minmax_normalise


def test_accepts_every_input_kind(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (21, 33, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    inputs = [
        str(tmp_path / "a.png"),
        tmp_path / "a.png",
        Image.fromarray(rgb),
        rgb,                                            # H x W x 3 uint8
        rgb.astype(np.float32) / 255,                   # float in [0, 1]
        np.dstack([rgb, np.full((21, 33), 255, np.uint8)]),  # RGBA: alpha dropped
        torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),  # 3 x H x W uint8
    ]
    res = segment(inputs, steps=3, ensemble=2, model=tiny_model)
    assert len(res) == len(inputs)
    for r in res:
        assert r.mask.shape == (21, 33) and r.mask.dtype == bool
        assert r.probability.dtype == np.float32 and r.std.dtype == np.float32
        assert r.probability.min() >= 0 and r.probability.max() <= 1
    # Every kind of the same picture becomes the same (3, H, W) values, hence the same noise
    # key (keys are made from the pixels) and the same result, wherever it stands.
    chws = [to_chw(x) for x in inputs]
    for c in chws[1:]:
        assert torch.equal(c, chws[0])
    # (the 7 images run as batches of 4 and 3: oneDNN's batch-size-dependent rounding, ~1e-6)
    for r in res[1:]:
        np.testing.assert_allclose(r.probability, res[0].probability, atol=1e-5)


def test_grayscale_and_batched_tensor(tiny_model):
    gray = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    r = segment(gray, steps=2, ensemble=1, model=tiny_model)[0]
    assert r.mask.shape == (40, 30)
    batch = torch.rand(3, 3, 17, 19)
    res = segment(batch, steps=2, ensemble=1, model=tiny_model)
    assert [x.mask.shape for x in res] == [(17, 19)] * 3
    assert torch.equal(to_chw(gray), torch.from_numpy(np.repeat(gray[None], 3, 0)))


def test_same_seed_same_masks_and_batch_independence(tiny_model):
    imgs = [torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    a = segment(imgs, steps=4, ensemble=3, model=tiny_model, seed=1, batch_size=3)
    b = segment(imgs, steps=4, ensemble=3, model=tiny_model, seed=1, batch_size=1)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.probability, y.probability, atol=1e-5)
    c = segment(imgs, steps=4, ensemble=3, model=tiny_model, seed=2)
    assert not np.allclose(a[0].probability, c[0].probability)


def test_probability_and_std_are_ensemble_statistics(tiny_model):
    img = torch.rand(3, 16, 16)          # the model size: no resizing of the maps
    r = segment(img, steps=3, ensemble=4, model=tiny_model, return_samples=True,
                backend="reference")[0]
    x = sample_ensemble(tiny_model, Schedule.published(), minmax_normalise(img[None]), 3, 4,
                        seed=0, noise_keys=[content_key(img)])[0]
    fg = ((x + 1) / 2).clamp(0, 1)
    np.testing.assert_allclose(r.probability, ((x.mean(0) + 1) / 2).clamp(0, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(r.std, fg.std(0, unbiased=False).numpy(), atol=1e-6)
    assert np.array_equal(r.mask, (x.mean(0) > 0).numpy())     # published rule: mean > 0
    assert r.samples.shape == (4, 16, 16)
    one = segment(img, steps=3, ensemble=1, model=tiny_model)[0]
    assert np.all(one.std == 0)


def test_ddpm_sampler_option(tiny_model):
    # A shorter schedule keeps the test cheap (the published T = 250 is covered in
    # diffusion/test_samplers.py); eps_hat = 0 with small betas keeps the chains near unit
    # scale (large activations make softmax produce slow denormals on CPUs).
    with torch.no_grad():
        tiny_model.final_conv.weight.zero_()
        tiny_model.final_conv.bias.zero_()
    pipe = pipeline_from_network(tiny_model, schedule=Schedule.linear(40, 1e-4, 0.02))
    r = segment(torch.rand(3, 16, 16), sampler="ddpm", ensemble=2, model=pipe)[0]
    assert r.mask.shape == (16, 16) and np.isfinite(r.probability).all()
    with pytest.raises(ValueError, match="1..40"):       # the pipeline's own schedule counts
        pipe.segment(torch.rand(3, 16, 16), steps=41)


def test_diverging_chains_raise_a_clear_error(tiny_model):
    nan_eps = lambda x, image, t: torch.full_like(x, float("nan"))
    with pytest.raises(FloatingPointError, match="diverged"):
        sample_ensemble(nan_eps, Schedule.published(), torch.rand(1, 3, 16, 16), 2, 1, 0)


def test_model_from_checkpoint_path(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    img = torch.rand(3, 16, 16)
    a = segment(img, steps=2, ensemble=2, model=str(path))[0]
    b = segment(img, steps=2, ensemble=2, model=tiny_model)[0]
    assert np.array_equal(a.probability, b.probability)


@pytest.mark.parametrize("bad, message", [
    ([], "empty"),
    (np.zeros((0, 5, 3), np.uint8), "zero size"),
    (np.full((5, 5, 3), np.nan, np.float32), "NaN"),
    (np.full((5, 5, 3), np.inf, np.float32), "NaN or infinite"),
    (np.zeros((5, 5, 2), np.uint8), r"\(H, W, 3\)"),
    (torch.zeros(2, 5, 5), r"\(3, H, W\)"),
    (np.full((4, 4, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((4, 4, 3), np.int32), "dtype"),
    (12, "got int"),
])
def test_bad_images_are_rejected_clearly(bad, message, tiny_model):
    with pytest.raises(ImageInputError, match=message):
        segment(bad, steps=1, ensemble=1, model=tiny_model)


def test_corrupt_and_missing_files_are_named(tmp_path, tiny_model):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(ImageInputError, match="broken.png.*corrupt"):
        segment([torch.rand(3, 8, 8), bad], steps=1, ensemble=1, model=tiny_model)
    with pytest.raises(ImageInputError, match="nothere.png: no such file"):
        segment(tmp_path / "nothere.png", steps=1, ensemble=1, model=tiny_model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), ">= 1"), (dict(steps=251), "1..250"), (dict(steps=2.5), "integer"),
    (dict(ensemble=0), ">= 1"), (dict(sampler="euler"), "ddim"),
    (dict(batch_size=0), "batch_size"), (dict(batch_size=-1), "batch_size"),
    (dict(batch_size=1.5), "batch_size"), (dict(backend="gpu"), "backend"),
])
def test_bad_arguments(kwargs, message, tiny_model):
    with pytest.raises(ValueError, match=message):
        segment(torch.rand(3, 8, 8), model=tiny_model, **{"steps": 2, "ensemble": 1, **kwargs})


def test_default_model_missing_gives_instructions(monkeypatch, tmp_path):
    import dsd_fast.api as api
    monkeypatch.setattr(api, "DEFAULT_MODEL_PATH", tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        segment(torch.rand(3, 8, 8))


def test_16bit_png(tmp_path, tiny_model):
    arr = (np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 100)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    chw = to_chw(tmp_path / "deep.png")
    assert chw.shape == (3, 30, 20)
    assert chw.max().item() == pytest.approx(arr.max() / 65535, rel=1e-6)
    assert segment(tmp_path / "deep.png", steps=1, ensemble=1, model=tiny_model)[0].mask.shape == (30, 20)


def test_entropy_staple_fusion_and_samples(tiny_model):
    from dsd_fast.uncertainty import entropy_map, staple_fusion
    img = torch.rand(3, 24, 20)
    mean = segment(img, steps=3, ensemble=5, model=tiny_model, return_samples=True)[0]
    st = segment(img, steps=3, ensemble=5, model=tiny_model, fusion="staple", return_samples=True)[0]
    np.testing.assert_allclose(mean.entropy, entropy_map(mean.probability), atol=1e-6)
    assert mean.samples.shape == (5, 24, 20) and mean.fusion == "mean"
    assert np.array_equal(st.samples, mean.samples)              # same chains, other fusion
    assert np.array_equal(st.mask, staple_fusion(mean.samples)) and st.fusion == "staple"
    np.testing.assert_array_equal(st.probability, mean.probability)
    with pytest.raises(ValueError, match="fusion"):
        segment(img, steps=1, ensemble=1, model=tiny_model, fusion="vote")
    with pytest.raises(ValueError, match="refine"):
        segment(img, steps=1, ensemble=1, model=tiny_model, refine="bilateral")
    with pytest.raises(ValueError, match="fusion='mean'"):
        segment(img, steps=1, ensemble=1, model=tiny_model, refine="crf", fusion="staple")


def test_crf_refinement(tiny_model):
    pytest.importorskip("pydensecrf.densecrf", reason="the [crf] extra (pydensecrf2) is not installed")
    from dsd_fast.crf import crf_refine
    # A clear two-region image with a blurry, shifted probability: the CRF snaps to the edge.
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, 20:] = 220
    prob = np.clip((np.arange(40) - 14) / 12, 0, 1)[None].repeat(40, 0).astype(np.float32)
    refined = crf_refine(img, prob)
    assert refined.shape == (40, 40)
    assert (refined[:, 21:] > 0.5).all() and (refined[:, :19] < 0.5).all()
    r = segment(torch.rand(3, 16, 16), steps=2, ensemble=4, model=tiny_model, refine="crf")[0]
    assert r.fusion == "mean+crf" and r.mask.shape == (16, 16)


def test_crf_missing_extra_is_named(monkeypatch, tiny_model):
    import builtins
    real_import = builtins.__import__

    def no_crf(name, *a, **k):
        if name.startswith("pydensecrf"):
            raise ImportError(name)
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_crf)
    with pytest.raises(ImportError, match=r"dsd_fast\[crf\]"):
        segment(torch.rand(3, 8, 8), steps=1, ensemble=1, model=tiny_model, refine="crf")


def test_noise_keys_make_results_independent_of_position(tiny_model):
    imgs = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    together = segment(imgs, steps=3, ensemble=2, model=tiny_model, noise_keys=["a", "b", "c"],
                       backend="reference")
    alone = segment(imgs[2], steps=3, ensemble=2, model=tiny_model, noise_keys=["c"],
                    backend="reference")[0]
    # Same noise, different batch: only oneDNN's batch-size-dependent rounding differs
    # (~1e-7), amplified by DDIM's x0 estimate (1/sqrt(abar) ~ 10 at t = 166); 1.4e-6 seen.
    np.testing.assert_allclose(together[2].probability, alone.probability, atol=1e-5)
    by_content = segment(imgs[2], steps=3, ensemble=2, model=tiny_model, backend="reference")[0]
    assert not np.allclose(by_content.probability, alone.probability)   # the key matters
    with pytest.raises(ValueError, match="noise_keys"):
        segment(imgs, steps=1, ensemble=1, model=tiny_model, noise_keys=["a"])


def test_default_noise_is_keyed_by_content_not_position(tiny_model):
    """segment([a, b]) and segment([b]) give b the same mask: the default noise key is a
    digest of the image's pixels, not its index."""
    a, b = (torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in (7, 8))
    pair = segment([a, b], steps=3, ensemble=2, model=tiny_model, backend="reference")
    alone = segment([b], steps=3, ensemble=2, model=tiny_model, backend="reference")[0]
    swapped = segment([b, a], steps=3, ensemble=2, model=tiny_model, backend="reference")
    # only oneDNN's batch-size-dependent rounding differs (see the noise_keys test above)
    np.testing.assert_allclose(pair[1].probability, alone.probability, atol=1e-5)
    np.testing.assert_allclose(swapped[0].probability, alone.probability, atol=1e-5)
    np.testing.assert_allclose(swapped[1].probability, pair[0].probability, atol=1e-5)
    assert content_key(a) != content_key(b) and content_key(b) == content_key(b.clone())
    # a one-pixel change is another image: another key
    b2 = b.clone()
    b2[0, 0, 0] = 1 - b2[0, 0, 0]
    assert content_key(b2) != content_key(b)


def test_a_network_built_in_memory_segments(tiny_model):
    """build_model(cfg) has no schedule or preprocessing attached: the family's defaults
    apply, and the result equals a Pipeline given those defaults explicitly."""
    from dsd_fast import build_model, get_config
    from dsd_fast.preprocess import Preprocessing
    net = build_model(get_config("tiny")).eval()
    img = torch.rand(3, 20, 24)
    got = segment(img, steps=2, ensemble=2, model=net)[0]
    assert got.mask.shape == (20, 24)
    pipe = Pipeline(net, dsd_fast_family(), Schedule.published(), Preprocessing(16))
    want = pipe.segment(img, steps=2, ensemble=2)[0]
    np.testing.assert_array_equal(got.probability, want.probability)


def dsd_fast_family():
    from dsd_fast import get_family
    return get_family("dermosegdiff")


def test_load_returns_a_pipeline_with_the_files_schedule(tmp_path, tiny_model):
    import dsd_fast
    sched = Schedule.linear(60, 1e-4, 0.05)
    path = save_model(pipeline_from_network(tiny_model, schedule=sched), tmp_path / "m.safetensors")
    pipe = dsd_fast.load(path)
    assert isinstance(pipe, Pipeline) and pipe.family.name == "dermosegdiff"
    assert torch.equal(pipe.schedule.betas, sched.betas)
    assert pipe.preprocessing.image_size == 16 and pipe.config == tiny_model.config
    img = torch.rand(3, 16, 16)
    r1 = pipe.segment(img, steps=3, ensemble=2)[0]
    r2 = segment(img, steps=3, ensemble=2, model=str(path))[0]
    r3 = pipe(img, steps=3, ensemble=2)[0]
    np.testing.assert_array_equal(r1.probability, r2.probability)
    np.testing.assert_array_equal(r1.probability, r3.probability)
    # the network alone takes the family's default schedule (T = 250): other results
    r4 = segment(img, steps=3, ensemble=2, model=pipe.model)[0]
    assert not np.array_equal(r1.probability, r4.probability)
    assert "dermosegdiff" in repr(pipe) and "T=60" in repr(pipe)


def test_mean_squared_fusion_is_the_official_medsegdiff_rule():
    from dsd_fast.results import samples_to_result
    # three chains in [-1, 1]: at pixel (0, 0) two of three are foreground, mean in {0, 1}
    # space 2/3 -> (2/3)^2 = 0.44 < 0.5: background under mean-squared, foreground under mean
    s = -torch.ones(3, 4, 4)
    s[:2, 0, 0] = 1
    s[:, 1, 1] = 1
    r_mean = samples_to_result(s, (4, 4))
    r_msq = samples_to_result(s, (4, 4), fusion="mean-squared")
    assert r_mean.mask[0, 0] and not r_msq.mask[0, 0]
    assert r_msq.mask[1, 1] and r_msq.mask.sum() == 1 and r_msq.fusion == "mean-squared"


SAMPLER_DEFAULTS = {"steps": 2, "ensemble": 3, "spacing": "trailing"}


def test_model_sampler_defaults_apply_only_when_no_sampler_setting_is_given(tmp_path, tiny_model):
    """A file's sampler_defaults are segment()'s defaults as a whole; a call that gives any of
    steps / ensemble / spacing gets 25 / 5 / leading for the others (steps=25 means 5 x 25)."""
    import dsd_fast
    path = save_model(tiny_model, tmp_path / "m.safetensors",
                      extra_metadata={"sampler_defaults": SAMPLER_DEFAULTS})
    pipe = dsd_fast.load(str(path))
    assert pipe.sampler_settings() == (2, 3, "trailing")
    assert pipe.sampler_settings(steps=4) == (4, 5, "leading")
    assert pipe.sampler_settings(spacing="leading") == (25, 5, "leading")
    assert pipe.sampler_settings(sampler="ddpm") == (25, 5, "leading")
    assert pipeline_from_network(tiny_model).sampler_settings() == (25, 5, "leading")
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
    res = pipe.segment(img, return_samples=True)[0]
    same = pipe.segment(img, steps=2, ensemble=3, spacing="trailing", return_samples=True)[0]
    assert res.samples.shape[0] == 3
    assert np.array_equal(res.probability, same.probability)
    one_call = segment(img, model=str(path), return_samples=True)[0]
    assert np.array_equal(one_call.probability, same.probability)


@pytest.mark.parametrize("raw", ['{"steps": 0, "ensemble": 3, "spacing": "trailing"}',
                                 '{"steps": 2}', "not json",
                                 '{"steps": 2, "ensemble": 3, "spacing": "sideways"}'])
def test_bad_sampler_defaults_metadata_is_refused(tmp_path, tiny_model, raw):
    import dsd_fast
    from dsd_fast.checkpoint import CheckpointError
    path = save_model(tiny_model, tmp_path / "m.safetensors",
                      extra_metadata={"sampler_defaults": raw})
    with pytest.raises(CheckpointError, match="sampler_defaults"):
        dsd_fast.load(str(path))
