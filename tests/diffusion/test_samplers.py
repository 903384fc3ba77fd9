"""Schedule values and sampler step formulas against hand computations."""
import math

import pytest
import torch

from dsd_fast.diffusion import (DDIMSampler, DDIMTables, Schedule, ddim_timesteps,
                                ddpm_sample, ddpm_step_coefficients)


def test_published_schedule_values():
    s = Schedule.published()
    assert s.T == 250
    assert s.betas[0].item() == pytest.approx(4e-4, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(8e-2, rel=1e-6)
    assert s.betas[1].item() == pytest.approx(4e-4 + (8e-2 - 4e-4) / 249, rel=1e-6)
    # abar by hand for the first three steps
    b = [s.betas[i].item() for i in range(3)]
    assert s.alphas_cumprod[2].item() == pytest.approx((1 - b[0]) * (1 - b[1]) * (1 - b[2]), rel=1e-12)
    assert s.alphas_cumprod_prev[0].item() == 1.0
    assert s.alphas_cumprod_prev[5].item() == s.alphas_cumprod[4].item()
    # posterior variance at t = 10 by hand
    ac, acp = s.alphas_cumprod[10].item(), s.alphas_cumprod[9].item()
    assert s.posterior_variance[10].item() == pytest.approx(s.betas[10].item() * (1 - acp) / (1 - ac), rel=1e-12)
    # near-complete destruction of the signal at the end, as for any usable schedule
    assert s.alphas_cumprod[-1].item() < 1e-3


def test_q_sample_formula():
    s = Schedule.published()
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 100, 249])
    xt = s.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        ac = s.alphas_cumprod[ti].item()
        torch.testing.assert_close(xt[i], math.sqrt(ac) * x0[i] + math.sqrt(1 - ac) * noise[i])


def test_ddim_timesteps_sequence():
    assert ddim_timesteps(250, 25).tolist() == list(range(240, -1, -10))
    assert ddim_timesteps(250, 250).tolist() == list(range(249, -1, -1))
    assert ddim_timesteps(250, 1).tolist() == [0]
    ts = ddim_timesteps(250, 7).tolist()          # uneven spacing: floor(i * 250 / 7)
    assert ts == [math.floor(i * 250 / 7) for i in range(6, -1, -1)]
    for bad in (0, 251, -3):
        with pytest.raises(ValueError, match="1..250"):
            ddim_timesteps(250, bad)


def test_ddim_step_against_hand_computation():
    s = Schedule.published()
    tab = DDIMTables.build(s, 25, eta=0.5)
    x, eps = 0.7, -1.3
    i = 3                                           # t = 210 -> next 200
    t, tn = 210, 200
    a_t, a_n = s.alphas_cumprod[t].item(), s.alphas_cumprod[tn].item()
    x0_hat = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    sigma = 0.5 * math.sqrt((1 - a_n) / (1 - a_t)) * math.sqrt(1 - a_t / a_n)
    expected_mean = math.sqrt(a_n) * x0_hat + math.sqrt(1 - a_n - sigma ** 2) * eps
    got = tab.c_x[i].item() * x + tab.c_eps[i].item() * eps
    assert tab.timesteps[i].item() == t
    assert got == pytest.approx(expected_mean, rel=1e-12)
    assert tab.sigma[i].item() == pytest.approx(sigma, rel=1e-12)
    # last step goes to "clean": x = x0_hat, no noise
    a0 = s.alphas_cumprod[0].item()
    assert tab.c_x[-1].item() * x + tab.c_eps[-1].item() * eps == pytest.approx(
        (x - math.sqrt(1 - a0) * eps) / math.sqrt(a0), rel=1e-12)
    assert tab.sigma[-1].item() == 0.0


def test_ddpm_step_against_published_formula():
    s = Schedule.published()
    c_x, c_eps, std = ddpm_step_coefficients(s)
    t, x, eps = 77, 0.3, 0.9
    b, a, ac = s.betas[t].item(), s.alphas[t].item(), s.alphas_cumprod[t].item()
    mean = (x - b * eps / math.sqrt(1 - ac)) / math.sqrt(a)
    assert c_x[t].item() * x + c_eps[t].item() * eps == pytest.approx(mean, rel=1e-12)
    assert std[t].item() == pytest.approx(math.sqrt(s.posterior_variance[t].item()), rel=1e-12)
    assert std[0].item() == 0.0                      # published: the mean alone at t = 0


def test_ddim_with_all_steps_and_eta_one_is_ddpm():
    """DDIM(steps=T, eta=1) has DDPM's per-step mean and variance exactly (Song et al. 2021)."""
    s = Schedule.published()
    tab = DDIMTables.build(s, s.T, eta=1.0)
    c_x, c_eps, std = ddpm_step_coefficients(s)
    order = torch.arange(s.T - 1, -1, -1)
    torch.testing.assert_close(tab.c_x, c_x[order], rtol=1e-10, atol=0)
    torch.testing.assert_close(tab.c_eps, c_eps[order], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tab.sigma, std[order], rtol=1e-9, atol=1e-12)


def _toy_eps(x, image, t):
    # A deterministic stand-in for the network that depends on all three inputs.
    return 0.5 * x + 0.1 * image.mean(1, keepdim=True) + 1e-3 * t.view(-1, 1, 1, 1)


def test_samplers_are_deterministic_under_a_seed():
    s = Schedule.published()
    img = torch.rand(2, 3, 8, 8)
    run = lambda seed, eta: DDIMSampler(s, 10, eta).sample(_toy_eps, img, torch.Generator().manual_seed(seed))
    assert torch.equal(run(3, 0.0), run(3, 0.0))
    assert torch.equal(run(3, 1.0), run(3, 1.0))
    assert not torch.equal(run(3, 1.0), run(4, 1.0))
    d = lambda seed: ddpm_sample(_toy_eps, img, s, torch.Generator().manual_seed(seed))
    assert torch.equal(d(5), d(5)) and not torch.equal(d(5), d(6))


def test_ddim_loop_matches_an_unoptimised_loop():
    """The in-place static-buffer loop equals the textbook DDIM update written plainly."""
    s = Schedule.published()
    img = torch.rand(2, 3, 8, 8)
    x_init = torch.randn(2, 1, 8, 8)
    got = DDIMSampler(s, 12, 0.0, clip_x0=False).sample(_toy_eps, img, torch.Generator(),
                                                      x_init=x_init)
    ac = s.alphas_cumprod
    ts = ddim_timesteps(s.T, 12).tolist()
    x = x_init.double()
    for i, t in enumerate(ts):
        eps = _toy_eps(x.float(), img, torch.full((2,), t)).double()
        a_t = ac[t]
        a_n = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_n.sqrt() * x0 + (1 - a_n).sqrt() * eps
    torch.testing.assert_close(got.double(), x, rtol=1e-4, atol=1e-4)
    # a sampler reused for a second batch gives the same answer (static buffers are reset)
    sampler = DDIMSampler(s, 12, 0.0, clip_x0=False)
    first = sampler.sample(_toy_eps, img, torch.Generator(), x_init=x_init)
    sampler.sample(_toy_eps, img, torch.Generator(), x_init=torch.randn(2, 1, 8, 8))
    assert torch.equal(sampler.sample(_toy_eps, img, torch.Generator(), x_init=x_init), first)


def _wild_eps(x, image, t):
    # eps far from what x implies: unclipped x0 estimates leave [-1, 1] at once
    return -3.0 * x + image.mean(1, keepdim=True)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_clipped_ddim_matches_a_plain_clipped_loop(eta):
    """clip_x0: x0_hat clamped to [-1, 1], eps re-derived from it, then the usual update."""
    s = Schedule.published()
    img = torch.rand(2, 3, 8, 8)
    x_init = torch.randn(2, 1, 8, 8)
    got = DDIMSampler(s, 10, eta, clip_x0=True).sample(
        _wild_eps, img, torch.Generator().manual_seed(1), x_init=x_init)
    ac = s.alphas_cumprod
    ts = ddim_timesteps(s.T, 10).tolist()
    gen = torch.Generator().manual_seed(1)
    x = x_init.double()
    clipped_any = False
    for i, t in enumerate(ts):
        eps = _wild_eps(x.float(), img, None).double()
        a_t = ac[t]
        a_n = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        clipped_any |= bool((x0.abs() > 1).any())
        x0 = x0.clamp(-1, 1)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_n) / (1 - a_t)).sqrt() * (1 - a_t / a_n).sqrt()
        x = a_n.sqrt() * x0 + (1 - a_n - sigma ** 2).clamp_min(0).sqrt() * eps
        if eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=gen).double()
    assert clipped_any                       # the case exercises the clamp
    torch.testing.assert_close(got.double(), x, rtol=1e-4, atol=1e-4)
    assert got.abs().max() <= 1.0 + 1e-6     # the last step returns the clipped x0
    unclipped = DDIMSampler(s, 10, eta, clip_x0=False).sample(
        _wild_eps, img, torch.Generator().manual_seed(1), x_init=x_init)
    assert not torch.allclose(unclipped, got)


def test_schedule_serialises():
    s = Schedule.published()
    s2 = Schedule.from_dict(s.to_dict())
    assert torch.equal(s.betas, s2.betas)
    with pytest.raises(ValueError):
        Schedule.from_dict({"kind": "cosine"})


def test_x0_clipping_is_the_default_everywhere():
    """One default for DDIM's x0 clipping: the sampler, the graph sampler, segment(), CLI."""
    import inspect

    import dsd_fast
    from dsd_fast.cli.run import BatchOptions
    from dsd_fast.diffusion import ddim_sample, sample_ensemble
    from dsd_fast.diffusion.graph import StaticDDIM, static_ddim
    assert DDIMSampler(Schedule.published(), 5).clip_x0 is True
    for fn in (ddim_sample, sample_ensemble, static_ddim, StaticDDIM, dsd_fast.SegmentOptions,
               BatchOptions):          # segment() and the CLI take SegmentOptions' default
        assert inspect.signature(fn).parameters["clip_x0"].default is True, fn


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_networks_sample_like_the_eps_network_they_convert_to(prediction):
    """as_eps_model turns an x0- or v-predicting network into the noise predictor whose
    x0 / v it returns: DDIM over the converted network equals DDIM over the eps network."""
    from dsd_fast.diffusion import as_eps_model
    s = Schedule.linear(100, 1e-4, 0.05)
    ac = s.alphas_cumprod

    def as_prediction(x, image, t):
        eps = _toy_eps(x, image, t).double()
        a = ac[t].sqrt().view(-1, 1, 1, 1)
        r = (1 - ac[t]).sqrt().view(-1, 1, 1, 1)
        x0 = (x.double() - r * eps) / a
        return (x0 if prediction == "x0" else a * eps - r * x0).float()

    img, x_init = torch.rand(3, 3, 8, 8), torch.randn(3, 1, 8, 8)
    want = DDIMSampler(s, 7, clip_x0=False).sample(_toy_eps, img, None, x_init=x_init)
    got = DDIMSampler(s, 7, clip_x0=False).sample(as_eps_model(as_prediction, prediction, s),
                                                  img, None, x_init=x_init)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert as_eps_model(_toy_eps, "eps", s) is _toy_eps
    with pytest.raises(ValueError, match="prediction"):
        as_eps_model(_toy_eps, "score", s)
