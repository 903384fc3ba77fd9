"""The published DDPM ancestral sampler (DermoSegDiff: T = 250 steps, no x0 clipping).

Samplers take the network as a callable `eps_model(x_t, image, t) -> eps_hat` and draw every
random number from an explicit torch.Generator: the same seed gives the same masks.
"""
from __future__ import annotations

import torch

from .schedule import Schedule


def ddpm_step_coefficients(schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Published DDPM ancestral step as x_{t-1} = c_x x_t + c_eps eps_hat + std z.

    mean = (x_t - beta_t eps_hat / sqrt(1 - abar_t)) / sqrt(alpha_t); std = sqrt(posterior
    variance) for t > 0 and 0 at t = 0 (the published code returns the mean there).
    """
    b, a, ac = schedule.betas, schedule.alphas, schedule.alphas_cumprod
    c_x = 1 / a.sqrt()
    c_eps = -b / ((1 - ac).sqrt() * a.sqrt())
    std = schedule.posterior_variance.sqrt()
    std[0] = 0.0
    return c_x, c_eps, std


@torch.no_grad()
def ddpm_sample(eps_model, image: torch.Tensor, schedule: Schedule,
                generator: torch.Generator, progress=None, x_init=None) -> torch.Tensor:
    """Published sampler: x_T ~ N(0, I) (or x_init), then t = T-1 .. 0 ancestral steps.

    Returns x_0 (B, 1, H, W) in mask space.
    """
    b, _, h, w = image.shape
    dev, dt = image.device, image.dtype
    c_x, c_eps, std = (c.to(dev, dt) for c in ddpm_step_coefficients(schedule))
    if x_init is None:
        x = torch.randn((b, 1, h, w), generator=generator, device=dev, dtype=dt)
    else:
        x = x_init.to(dev, dt).clone()
    t_buf = torch.empty(b, dtype=torch.long, device=dev)
    z = torch.empty_like(x)
    for t in reversed(range(schedule.T)):
        eps = eps_model(x, image, t_buf.fill_(t))
        z.normal_(generator=generator)
        x = c_x[t] * x + c_eps[t] * eps + std[t] * z
        if progress is not None:
            progress()
    return x
