"""DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction) on the trained discrete
schedule: the fast sampler the official MedSegDiff code offers but breaks (its DPM-Solver
path returns the network's raw output, medsegdiff.md 2.10).

Grid: steps + 1 points t_i = round((T - 1)(1 - i / steps)), from T - 1 down to 0, on the
trained T's own abar (nothing re-derived from the step count); `steps` network evaluations,
at every point but the last. With
alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and
x0_i the (clamped) data prediction at t_i, step i -> i+1 with h = lambda_{i+1} - lambda_i:
    first step:   x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} (e^-h - 1) x0_i
    later steps:  D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1},  r = h_{i-1} / h
                  x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} (e^-h - 1) D
The sample returned is x at t = 0 (abar_0 = 1 - beta_0: nearly clean), as DPM-Solver
returns it. Deterministic: no noise after x_T.
"""
from __future__ import annotations

import math

import torch

from .schedule import Schedule


def dpm_timesteps(T: int, steps: int) -> torch.Tensor:
    """steps + 1 grid points from T - 1 down to 0, uniform in t (DPM-Solver's
    "time_uniform" on a discrete schedule: continuous t = (n + 1) / T)."""
    if not 1 <= steps <= T - 1:
        raise ValueError(f"steps must be in 1..{T - 1} (the schedule's length - 1), got {steps}")
    return torch.linspace(T - 1, 0, steps + 1, dtype=torch.float64).round().long()


@torch.no_grad()
def dpm_solver_pp_2m(eps_model, image: torch.Tensor, schedule: Schedule, steps: int,
                     x_init: torch.Tensor, clip_x0: bool = True, progress=None) -> torch.Tensor:
    ts = dpm_timesteps(schedule.T, steps)
    ac = schedule.alphas_cumprod[ts]                                    # float64
    alpha, sigma = ac.sqrt(), (1 - ac).sqrt()
    lam = (alpha / sigma).log()
    x = x_init.to(image.device, image.dtype).clone()
    b = x.shape[0]
    x0_prev, h_prev = None, None
    # DPM-Solver's lower_order_final: below 15 steps the last step is first order (a
    # second-order extrapolation over the long last interval in lambda is unstable).
    first_order_last = steps < 15
    order = range(steps)
    for i in (progress(order) if progress else order):
        t = torch.full((b,), int(ts[i]), device=x.device, dtype=torch.long)
        eps = eps_model(x, image, t)
        x0 = (x - float(sigma[i]) * eps) / float(alpha[i])
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        h = float(lam[i + 1] - lam[i])
        if x0_prev is None or (first_order_last and i == steps - 1):
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = float(sigma[i + 1] / sigma[i]) * x - float(alpha[i + 1]) * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x
