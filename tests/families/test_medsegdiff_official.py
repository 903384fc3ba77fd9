"""The official MedSegDiff code's V2 network and diffusion against numbers from that code.

tests/data/msd_official_golden.safetensors was written by running ImprintLab/MedSegDiff
(@28b343f, --version new, learn_sigma True, linear schedule) in a scratch folder outside
this repository, its networks filled with `deterministic_weights` (tests/families): the
forward of two small configs, a 30-step DDPM with injected noise, its `cal_out` and
`staple`, and its spaced schedule. Nothing of that code is in this repository.
"""
import warnings
from pathlib import Path

import pytest
import torch
from deterministic_weights import deterministic_weights
from safetensors.torch import load_file

import dsd_fast
from dsd_fast.diffusion.ddpm import ddpm_sample_learned_range
from dsd_fast.families import detect_family, find_config
from dsd_fast.families.medsegdiff_official import (MEDSEGDIFF_OFFICIAL, OFFICIAL_CONFIGS,
                                                   OfficialDenoiser, build_official_medsegdiff,
                                                   official_schedule)
from dsd_fast.families.medsegdiff_official.checkpoint import (AssumedSettingsWarning,
                                                              infer_config)
from dsd_fast.families.medsegdiff_official.sampling import cal_out, staple_mean_squared

GOLDEN = load_file(str(Path(__file__).parent.parent / "data" / "msd_official_golden.safetensors"))


def golden_net(name, **changes):
    net = build_official_medsegdiff(OFFICIAL_CONFIGS[name].replace(**changes)).eval()
    net.load_state_dict(deterministic_weights({k: v.shape for k, v in net.state_dict().items()}))
    return net


def close(a, b, rel):
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= rel * max(scale, 1e-6), (err, scale)


@pytest.mark.parametrize("name", ["msd_official_tiny", "msd_official_tiny_ss"])
def test_forward_matches_the_official_code(name):
    net = golden_net(name)
    s = net.config.image_size
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 1, s, s, generator=g)
    image = torch.rand(2, 3, s, s, generator=g)
    with torch.no_grad():
        out, cal = net(x_t, image, torch.tensor([3, 917]))
    key = name.replace("msd_official_", "")
    close(out, GOLDEN[f"{key}.out"], 1e-5)
    close(cal, GOLDEN[f"{key}.cal"], 1e-5)


def test_schedule_is_the_spaced_linear_schedule():
    assert torch.equal(official_schedule(30).betas.float(), GOLDEN["schedule.betas_T30"])
    close(official_schedule(1000).betas, GOLDEN["schedule.betas_T1000"], 1e-12)


def _ddpm_inputs():
    g = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, 32, 32, generator=g)
    noises = [torch.randn(2, 1, 32, 32, generator=g) for _ in range(31)]
    return image, noises


def test_ddpm_with_injected_noise_matches_the_official_loop():
    # x_T, then one draw per step t = 29 .. 0 (t = 0 included, multiplied by 0 there)
    net = golden_net("msd_official_tiny", timesteps=30)
    image, noises = _ddpm_inputs()
    drawn = iter(noises)
    den = OfficialDenoiser(net)
    x = ddpm_sample_learned_range(den.eps_and_variance, image, official_schedule(30),
                                  noise_fn=lambda shape: next(drawn).clone())
    assert next(drawn, None) is None                     # all 31 draws used, as the original
    close(x, GOLDEN["ddpm.sample"], 1e-4)
    close(den.cal, GOLDEN["ddpm.cal"], 1e-5)
    close(cal_out(x, den.cal), GOLDEN["ddpm.cal_out"], 1e-4)
    close(staple_mean_squared(torch.stack([x[0], x[1]])), GOLDEN["ddpm.staple"], 1e-4)


def test_staple_of_the_official_code_is_the_mean_squared():
    s = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(staple_mean_squared(s)[0], s.mean(0) ** 2)


def test_denoiser_computes_the_anchor_once_per_image():
    net = golden_net("msd_official_tiny")
    calls = []
    net.hwm.register_forward_hook(lambda *_: calls.append(1))
    den = OfficialDenoiser(net)
    image, x = torch.rand(2, 3, 32, 32), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        for t in (5, 4, 3):
            eps = den(x, image, torch.full((2,), t))
        assert len(calls) == 1
        torch.testing.assert_close(eps, net(x, image, torch.full((2,), 3))[0][:, :1])
        image.add_(0.1)                                  # in-place change: recomputed
        den(x, image, torch.full((2,), 3))
    assert len(calls) == 3                               # + the direct net() call above


def test_checkpoint_files_load_with_module_prefix_and_assumed_settings(tmp_path):
    net = golden_net("msd_official_tiny_ss")
    sd = net.state_dict()
    path = tmp_path / "emasavedmodel_0.9999_010000.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)     # --multi_gpu training
    with pytest.warns(AssumedSettingsWarning, match="num_heads=1"):
        pipe = dsd_fast.load(path, image_size=64)
    # num_heads is not stored: a wrong count loads silently (documented), the right one is
    # exact
    pipe = dsd_fast.load(path, image_size=64, num_heads=4, timesteps=1000)
    assert pipe.family is MEDSEGDIFF_OFFICIAL
    assert pipe.config == net.config
    for k, v in pipe.model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_config_inference_reads_every_shape_flag():
    for name in ("msd_official_tiny", "msd_official_tiny_ss", "msd_official_isic"):
        cfg = OFFICIAL_CONFIGS[name]
        shapes = {k: torch.empty(v.shape) for k, v in
                  build_official_medsegdiff(cfg).state_dict().items()} if name != \
            "msd_official_isic" else None
        if shapes is None:          # the 129 M ISIC network: shapes only, on the meta device
            with torch.device("meta"):
                shapes = build_official_medsegdiff(cfg).state_dict()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AssumedSettingsWarning)
            got = infer_config(shapes, image_size=cfg.image_size, num_heads=cfg.num_heads)
        assert got == cfg, name
        assert detect_family(shapes)[0] is MEDSEGDIFF_OFFICIAL


def test_a_wrong_guess_fails_naming_the_key():
    net = golden_net("msd_official_tiny")
    sd = dict(net.state_dict())
    sd["out.2.weight"] = sd["out.2.weight"][:, :64]
    other = build_official_medsegdiff(OFFICIAL_CONFIGS["msd_official_tiny"])
    with pytest.raises(RuntimeError, match="out.2.weight"):
        other.load_state_dict(sd)


@pytest.mark.parametrize("sampler,steps", [("ddim", 5), ("dpmpp", 5), ("ddpm", 30)])
def test_segment_runs_every_sampler_and_maps_the_mask_space(sampler, steps):
    net = golden_net("msd_official_tiny", timesteps=30)
    pipe = dsd_fast.pipeline_from_network(net)
    image = torch.rand(3, 40, 50)
    res = pipe.segment([image], steps=steps, ensemble=2, sampler=sampler,
                       backend="reference", return_samples=True)[0]
    assert res.mask.shape == (40, 50) and res.probability.shape == (40, 50)
    # results see samples mapped 2 s - 1: the mask is s > 1/2 in the {0, 1} space
    raw = pipe.sample(pipe.model_input([image]), steps, 2, 0, [0], sampler=sampler,
                      backend="reference")
    assert raw.shape == (1, 2, 32, 32)
    assert torch.isfinite(raw).all()


def test_pipeline_ddpm_is_the_learned_range_loop_with_the_engine_noise():
    net = golden_net("msd_official_tiny", timesteps=30)
    pipe = dsd_fast.pipeline_from_network(net)
    image = torch.rand(1, 3, 32, 32)
    got = pipe.sample(image, 30, 1, 7, [0], sampler="ddpm", backend="reference")
    from dsd_fast.diffusion.ensemble import initial_noise
    x_init = initial_noise([0], 1, 32, 7)
    gen = torch.Generator().manual_seed(7)
    want = ddpm_sample_learned_range(OfficialDenoiser(net).eps_and_variance, image,
                                     official_schedule(30), gen, x_init=x_init)
    torch.testing.assert_close(got[0, 0], (want * 2 - 1)[0, 0])


def test_named_configs_are_found():
    fam, cfg = find_config("msd_official_tiny")
    assert fam is MEDSEGDIFF_OFFICIAL and cfg.image_size == 32


# ---------------------------------------------------------------- V1 (256 px, README flags)
V1_GOLDEN = Path(__file__).parent.parent / "data" / "msd_official_golden_v1.safetensors"


@pytest.fixture(scope="module")
def v1_net():
    net = build_official_medsegdiff(OFFICIAL_CONFIGS["msd_official_isic_v1"]).eval()
    net.load_state_dict(deterministic_weights({k: v.shape for k, v in net.state_dict().items()}))
    return net


def _v1_inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(1, 1, 256, 256, generator=g), torch.rand(1, 3, 256, 256, generator=g)


def test_v1_published_forward_matches_the_official_code_with_its_random_draws(v1_net):
    # The published V1 forward draws a fresh Conv2d(480, 512, 1) from the global generator:
    # seeded the same way right before the call, ours draws the same weights.
    golden = load_file(str(V1_GOLDEN))
    x_t, image = _v1_inputs()
    for seed, key in ((123, "v1.out"), (124, "v1.out_seed124")):
        torch.manual_seed(seed)
        with torch.no_grad():
            out, cal = v1_net(x_t, image, torch.tensor([500]))
        close(out, golden[key], 1e-5)
    close(cal, golden["v1.cal"], 1e-5)
    # and the published forward is random: two seeds give different outputs
    assert (golden["v1.out"] - golden["v1.out_seed124"]).abs().max() > 1e-4


def test_v1_seeded_projection_is_deterministic(v1_net):
    x_t, image = _v1_inputs()
    seeded = build_official_medsegdiff(v1_net.config, v1_projection_seed=123).eval()
    seeded.load_state_dict(v1_net.state_dict())
    with torch.no_grad():
        a, _ = seeded(x_t, image, torch.tensor([500]))
        torch.manual_seed(999)                              # the global generator is ignored
        b, _ = seeded(x_t, image, torch.tensor([500]))
    assert torch.equal(a, b)
    # seed 123 drawn once = the published forward right after torch.manual_seed(123)
    close(a, load_file(str(V1_GOLDEN))["v1.out"], 1e-5)


def test_v1_checkpoints_are_recognised_by_their_ff_parser_keys(v1_net):
    shapes = {k: v for k, v in v1_net.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AssumedSettingsWarning)
        cfg = infer_config(shapes)
    assert cfg.version == "v1" and cfg == OFFICIAL_CONFIGS["msd_official_isic_v1"]
    assert any(k.startswith("hwm.ffparser.") for k in shapes)


def test_own_format_keeps_the_settings_no_official_file_stores(tmp_path):
    net = golden_net("msd_official_tiny", image_size=64, num_heads=2, timesteps=50)
    dsd_fast.save_model(net, tmp_path / "m.safetensors")
    pipe = dsd_fast.load(tmp_path / "m.safetensors")               # no settings, no warning
    assert pipe.family is MEDSEGDIFF_OFFICIAL and pipe.config == net.config
    assert pipe.schedule.T == 50 and pipe.preprocessing.image_size == 64
    for k, v in net.state_dict().items():
        assert torch.equal(pipe.model.state_dict()[k], v), k
