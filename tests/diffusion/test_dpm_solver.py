"""DPM-Solver++(2M) on a problem with a known answer: Gaussian data.

For x0 ~ N(mu, s^2) per pixel the exact noise predictor is
    eps(x_t, t) = sigma_t (x_t - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2)
and the probability-flow ODE keeps z = (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2)
fixed, so a deterministic sampler started at x_T must end at mu + s z (to the accuracy of
its integration; the last grid point is t = 0, abar_0 = 1 - beta_0, hence the small floor).
"""
import pytest
import torch

from dsd_fast.diffusion.ddim import DDIMSampler
from dsd_fast.diffusion.dpm_solver import dpm_solver_pp_2m, dpm_timesteps
from dsd_fast.diffusion.schedule import Schedule

MU, S = 0.3, 0.5


def _setup():
    sch = Schedule.scaled_linear(1000)
    ac = sch.alphas_cumprod

    def eps_model(x, image, t):
        a = ac[t].sqrt().float().view(-1, 1, 1, 1)
        sg = (1 - ac[t]).sqrt().float().view(-1, 1, 1, 1)
        return sg * (x - a * MU) / (a * a * S * S + sg * sg)

    x_T = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a_T, s_T = ac[-1].sqrt().item(), (1 - ac[-1]).sqrt().item()
    z = (x_T - a_T * MU) / (a_T ** 2 * S ** 2 + s_T ** 2) ** 0.5
    a_0, s_0 = ac[0].sqrt().item(), (1 - ac[0]).sqrt().item()
    exact_t0 = a_0 * MU + (a_0 ** 2 * S ** 2 + s_0 ** 2) ** 0.5 * z   # the ODE's x at t = 0
    return sch, eps_model, x_T, exact_t0, torch.zeros(64, 3, 4, 4)


def test_dpm_solver_converges_at_second_order_and_beats_ddim():
    sch, eps_model, x_T, exact, img = _setup()
    err = {n: (dpm_solver_pp_2m(eps_model, img, sch, n, x_T, clip_x0=False) - exact)
           .abs().max().item() for n in (100, 400)}
    assert err[400] < 5e-3, err
    assert err[400] < err[100] / 6, err          # second order: 4x the steps, ~16x less error
    ddim_err = (DDIMSampler(sch, 400, 0.0, False).sample(
        eps_model, img, torch.Generator(), x_init=x_T) - exact).abs().max().item()
    assert err[400] < ddim_err / 3, (err, ddim_err)


def test_grid_runs_from_the_last_trained_step_to_zero():
    ts = dpm_timesteps(1000, 10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 11
    assert (ts[:-1] > ts[1:]).all()
    with pytest.raises(ValueError, match="steps"):
        dpm_timesteps(1000, 1000)


def test_clipping_keeps_the_data_prediction_in_range():
    sch, _, x_T, _, img = _setup()
    calls = []

    def wild(x, image, t):                   # predicts noise that implies |x0| >> 1
        calls.append(int(t[0]))
        return -50 * x
    out = dpm_solver_pp_2m(wild, img, sch, 8, x_T, clip_x0=True)
    assert len(calls) == 8 and calls[0] == 999
    assert out.abs().max() <= 1.0 + 0.05      # x at t = 0 is alpha_0 x0 + a little noise
