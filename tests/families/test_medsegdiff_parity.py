"""The MedSegDiff family against lucidrains' med-seg-diff-pytorch 0.3.3 itself (a test-only
oracle, installed by the Makefile with --no-deps: nothing of it is imported by dsd_fast).

Networks: the package's own Unet state dicts at several configs load strictly, with no
argument, and give the same outputs (float32; bit-identical was measured, 1e-5 of scale is
asserted). Samplers: the package's `MedSegDiff.sample` (its DDPM, its DDIM with eta 1 and 0)
against the engine's samplers with the family's conventions, drawing the same random
numbers (the package draws from torch's global generator, the engine from a Generator with
the same seed, in the same order): final masks equal to 1e-4.
"""
from __future__ import annotations

import pytest
import torch

msd = pytest.importorskip("med_seg_diff_pytorch", reason="the oracle package is not installed")

import dsd_fast  # noqa: E402
from dsd_fast.diffusion import DDIMSampler, as_eps_model  # noqa: E402
from dsd_fast.diffusion.ddpm import ddpm_sample_clipped  # noqa: E402
from dsd_fast.families.medsegdiff import MEDSEGDIFF  # noqa: E402
from dsd_fast.families.medsegdiff.sampling import package_ddim_timesteps  # noqa: E402

from conftest import perturb_weights  # noqa: E402

# (package Unet kwargs): default-like, self-conditioned with condition skips, dynamic
# FF-Parser with other heads / groups / depth
CONFIGS = {
    "plain": dict(dim=8, image_size=16, dim_mults=(1, 2, 4), full_self_attn=(False, False, True)),
    "selfcond": dict(dim=8, image_size=16, dim_mults=(1, 2, 2),
                     full_self_attn=(False, True, False), self_condition=True,
                     skip_connect_condition_fmaps=True),
    "dynamic": dict(dim=16, image_size=32, dim_mults=(1, 2), full_self_attn=(True, False),
                    dynamic_ff_parser_attn_map=True, mid_transformer_depth=2, attn_heads=2,
                    attn_dim_head=16, resnet_block_groups=4),
}


def package_unet(name: str, seed: int = 0, perturb: float = 0.05):
    """The package's Unet with every weight moved off its init (the dynamic map's zero
    projection included), in eval mode."""
    torch.manual_seed(seed)
    return perturb_weights(msd.Unet(**CONFIGS[name]), perturb)


def settings(name):
    kw = CONFIGS[name]
    return {k: kw[k] for k in ("attn_heads", "resnet_block_groups") if k in kw}


def inputs(size, b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 1, size, size, generator=g), torch.rand(b, 3, size, size, generator=g),
            torch.tensor([0, 417, 999])[:b])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_package_state_dicts_load_strictly_and_compute_the_same(name, tmp_path):
    unet = package_unet(name)
    torch.save(unet.state_dict(), tmp_path / "unet.pt")
    net = dsd_fast.load_model(tmp_path / "unet.pt", **settings(name))
    assert MEDSEGDIFF.owns(net) and len(net.state_dict()) == len(unet.state_dict())
    x, img, t = inputs(CONFIGS[name]["image_size"])
    sc = torch.randn_like(x) if CONFIGS[name].get("self_condition") else None
    with torch.no_grad():
        want = unet(x, t, img, sc)
        got = net(x, img, t, sc) if sc is not None else net(x, img, t)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_default_config_needs_no_argument_and_wrong_heads_fail_loudly(tmp_path):
    unet = package_unet("plain")
    torch.save(unet.state_dict(), tmp_path / "u.pt")
    assert dsd_fast.load_model(tmp_path / "u.pt").config.attn_heads == 4
    odd = msd.Unet(dim=8, image_size=16, dim_mults=(1, 2), full_self_attn=(False, True),
                   attn_heads=2, attn_dim_head=16)
    torch.save(odd.state_dict(), tmp_path / "odd.pt")
    with pytest.raises(dsd_fast.CheckpointError, match="attn_heads"):
        dsd_fast.load_model(tmp_path / "odd.pt")          # width 32: 4 x 32 cannot be it


def test_wrapper_and_driver_files_load_with_their_schedule(tmp_path):
    unet = package_unet("plain")
    wrapper = msd.MedSegDiff(unet, timesteps=100, beta_schedule="linear")
    torch.save(wrapper.state_dict(), tmp_path / "wrapper.pt")
    pipe = dsd_fast.load(tmp_path / "wrapper.pt")
    assert (pipe.config.timesteps, pipe.config.beta_schedule) == (100, "linear")
    assert torch.allclose(pipe.schedule.alphas_cumprod.float(), wrapper.alphas_cumprod,
                          rtol=0, atol=1e-7)
    torch.save({"epoch": 7, "model_state_dict": unet.state_dict(), "optimizer_state_dict": {},
                "loss": torch.tensor(0.1, requires_grad=True)}, tmp_path / "driver.pt")
    pipe = dsd_fast.load(tmp_path / "driver.pt")          # bare weights: the package defaults
    assert (pipe.config.timesteps, pipe.config.beta_schedule, pipe.config.objective) == \
        (1000, "cosine", "pred_noise")


def _ours(unet_name, objective, T, tmp_path):
    unet = package_unet(unet_name)
    torch.save(unet.state_dict(), tmp_path / "u.pt")
    pipe = dsd_fast.load(tmp_path / "u.pt", objective=objective, timesteps=T,
                         **settings(unet_name))
    conv = MEDSEGDIFF.sampling_conventions(pipe.config)
    eps = as_eps_model(pipe.model, MEDSEGDIFF.prediction(pipe.config), pipe.schedule,
                       conv.self_condition)
    return unet, pipe, eps, conv


@pytest.mark.parametrize("unet_name, objective", [("plain", "pred_noise"),
                                                   ("selfcond", "pred_noise"),
                                                   ("plain", "pred_x0"), ("plain", "pred_v")])
def test_ddpm_matches_the_package(unet_name, objective, tmp_path):
    T = 40
    unet, pipe, eps, _ = _ours(unet_name, objective, T, tmp_path)
    wrapper = msd.MedSegDiff(unet, timesteps=T, objective=objective).eval()
    img = inputs(16, b=2)[1]
    torch.manual_seed(5)
    want = wrapper.sample(img)                             # (x + 1) / 2 of the final x
    got = ddpm_sample_clipped(eps, img, pipe.schedule, torch.Generator().manual_seed(5))
    assert ((got + 1) / 2 - want).abs().max() <= 1e-4


@pytest.mark.parametrize("unet_name, objective, eta", [("plain", "pred_noise", 1.0),
                                                        ("plain", "pred_noise", 0.0),
                                                        ("selfcond", "pred_noise", 1.0),
                                                        ("plain", "pred_x0", 1.0),
                                                        ("plain", "pred_v", 0.0)])
def test_ddim_matches_the_package(unet_name, objective, eta, tmp_path):
    T, S = 100, 10
    unet, pipe, eps, conv = _ours(unet_name, objective, T, tmp_path)
    wrapper = msd.MedSegDiff(unet, timesteps=T, sampling_timesteps=S, objective=objective,
                             ddim_sampling_eta=eta).eval()
    img = inputs(16, b=2)[1]
    torch.manual_seed(6)
    want = wrapper.sample(img)
    sampler = DDIMSampler(pipe.schedule, S, eta, clip_x0=True, keep_eps=conv.keep_eps,
                          timesteps=package_ddim_timesteps(T, S))
    got = sampler.sample(eps, img, torch.Generator().manual_seed(6))
    assert ((got + 1) / 2 - want).abs().max() <= 1e-4


def test_package_ddim_grid():
    assert package_ddim_timesteps(1000, 25).tolist() == list(range(999, 0, -40))
    assert package_ddim_timesteps(10, 10).tolist() == list(range(9, -1, -1))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", ["plain", "selfcond"])
def test_fast_model_and_half_spectrum_ff_parser_against_the_package(name, channels_last,
                                                                   tmp_path):
    """The fast model's FF-Parser runs the symmetrised half-spectrum gate through
    ops.ff_parser; against the package's own full-spectrum network: 1e-4 of scale, in both
    layouts (channels_last, the CPU default, has its channel LayerNorms as F.layer_norm)."""
    from dsd_fast.families.medsegdiff.fast import build_fast_model
    unet = package_unet(name)
    torch.save(unet.state_dict(), tmp_path / "u.pt")
    fast = build_fast_model(dsd_fast.load_model(tmp_path / "u.pt"), channels_last=channels_last)
    assert (type(fast).__name__ == "ChannelsLastMedSegDiffUnet") == channels_last
    x, img, t = inputs(16)
    sc = torch.randn_like(x) if CONFIGS[name].get("self_condition") else None
    with torch.no_grad():
        want = unet(x, t, img, sc)
        got = fast(x, img, t, sc) if sc is not None else fast(x, img, t)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_fast_and_reference_masks_agree_end_to_end(tmp_path):
    from dsd_fast.metrics import dice
    unet = package_unet("plain", perturb=0.02)
    torch.save(unet.state_dict(), tmp_path / "u.pt")
    pipe = dsd_fast.load(tmp_path / "u.pt", timesteps=100)
    imgs = [torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ref = pipe.segment(imgs, steps=8, ensemble=3, backend="reference")
    fast = pipe.segment(imgs, steps=8, ensemble=3, backend="fast")
    for r, f in zip(ref, fast):
        assert r.mask.shape == (40, 30)
        assert dice(f.mask, r.mask) >= 0.999
        assert abs(f.probability - r.probability).max() <= 1e-3


@pytest.mark.parametrize("bias", [False, True])
def test_channel_layer_norm_as_layer_norm_on_the_nhwc_view(bias):
    """FastChannelLayerNorm on channels_last input (F.layer_norm over the contiguous channel
    axis) against the reference formula: float32 rounding only (~1e-7 of scale measured;
    1e-5 catches a wrong eps, axis or missing gain), and the result stays channels_last."""
    from dsd_fast.families.medsegdiff.fast import FastChannelLayerNorm
    from dsd_fast.families.medsegdiff.layers import ChannelLayerNorm
    gen = torch.Generator().manual_seed(7)
    ref = ChannelLayerNorm(12, bias=bias)
    with torch.no_grad():
        ref.g.copy_(torch.randn(1, 12, 1, 1, generator=gen))
        if bias:
            ref.b.copy_(torch.randn(1, 12, 1, 1, generator=gen))
    fast = ChannelLayerNorm(12, bias=bias)
    fast.load_state_dict(ref.state_dict())
    fast.__class__ = FastChannelLayerNorm
    x = (torch.randn(3, 12, 9, 7, generator=gen) * 4 + 2).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = ref(x), fast(x)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    nchw = x.contiguous()
    with torch.no_grad():                                     # NCHW: the reference formula
        assert torch.equal(fast(nchw), ref(nchw))
