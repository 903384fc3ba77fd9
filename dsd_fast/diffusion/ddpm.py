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
    if hasattr(eps_model, "reset"):
        eps_model.reset()
    for t in reversed(range(schedule.T)):
        eps = eps_model(x, image, t_buf.fill_(t))
        z.normal_(generator=generator)
        x = c_x[t] * x + c_eps[t] * eps + std[t] * z
        if progress is not None:
            progress()
    return x


def clipped_posterior_tables(schedule: Schedule):
    """(1/sqrt(abar), sqrt(1/abar - 1), coef1, coef2, std) for the x0-clipped ancestral step
    of lucidrains' and guided-diffusion's p_sample:
        x0   = clamp(x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps, -1, 1)
        mean = coef1_t x0 + coef2_t x_t,  coef1 = beta sqrt(abar_prev) / (1 - abar),
                                          coef2 = (1 - abar_prev) sqrt(alpha) / (1 - abar)
        x_{t-1} = mean + exp(0.5 log(max(posterior variance, 1e-20))) z   (no z at t = 0)."""
    b, a, ac, acp = (schedule.betas, schedule.alphas, schedule.alphas_cumprod,
                     schedule.alphas_cumprod_prev)
    var = schedule.posterior_variance
    return ((1 / ac).sqrt(), (1 / ac - 1).sqrt(), b * acp.sqrt() / (1 - ac),
            (1 - acp) * a.sqrt() / (1 - ac), (0.5 * var.clamp(min=1e-20).log()).exp())


@torch.no_grad()
def ddpm_sample_clipped(eps_model, image: torch.Tensor, schedule: Schedule,
                        generator: torch.Generator, progress=None, x_init=None,
                        mask_channels: int = 1) -> torch.Tensor:
    """The x0-clipped ancestral sampler (MedSegDiff's codes): t = T-1 .. 0, noise drawn for
    t > 0 only, in that order, from `generator` (after x_T when x_init is not given).
    Tables are cast to float32 (the run dtype) as the original code stores them."""
    b, _, h, w = image.shape
    dev, dt = image.device, image.dtype
    r_a, r_m1, coef1, coef2, std = (c.to(dev, dt) for c in clipped_posterior_tables(schedule))
    if x_init is None:
        x = torch.randn((b, mask_channels, h, w), generator=generator, device=dev, dtype=dt)
    else:
        x = x_init.to(dev, dt).clone()
    t_buf = torch.empty(b, dtype=torch.long, device=dev)
    if hasattr(eps_model, "reset"):
        eps_model.reset()
    for t in reversed(range(schedule.T)):
        eps = eps_model(x, image, t_buf.fill_(t))
        x0 = (r_a[t] * x - r_m1[t] * eps).clamp_(-1, 1)
        mean = coef1[t] * x0 + coef2[t] * x
        if t > 0:
            x = mean + std[t] * torch.randn(x.shape, generator=generator, device=dev, dtype=dt)
        else:
            x = mean
        if progress is not None:
            progress()
    return x


def learned_range_tables(schedule: Schedule) -> dict[str, torch.Tensor]:
    """guided-diffusion's float64 tables for its learned-range DDPM step."""
    b, ac, acp = schedule.betas, schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    post_var = b * (1 - acp) / (1 - ac)
    return {"sqrt_recip_ac": (1 / ac).sqrt(), "sqrt_recipm1_ac": (1 / ac - 1).sqrt(),
            "coef1": b * acp.sqrt() / (1 - ac), "coef2": (1 - acp) * (1 - b).sqrt() / (1 - ac),
            "max_log": b.log(),
            # the posterior variance is 0 at t = 0: its log is clipped to the t = 1 value
            "min_log": torch.cat((post_var[1:2], post_var[1:])).log()}


@torch.no_grad()
def ddpm_sample_learned_range(eps_var_model, image: torch.Tensor, schedule: Schedule,
                              generator: torch.Generator | None = None, progress=None,
                              x_init=None, noise_fn=None) -> torch.Tensor:
    """guided-diffusion's DDPM with a learned-range variance (the official MedSegDiff code):
    `eps_var_model(x_t, image, t) -> (eps, v)`, v in [-1, 1] interpolating the log variance
    between the clipped posterior variance and beta_t; x0 clamped to [-1, 1]. As the
    original, a noise tensor is drawn at every step, t = 0 included (multiplied by 0 there),
    and each table entry is cast to float32 before use. `noise_fn(shape)`, when given,
    replaces the generator (parity tests inject the original run's noise)."""
    b, _, h, w = image.shape
    dev, dt = image.device, image.dtype
    draw = noise_fn or (lambda shape: torch.randn(shape, generator=generator, device=dev,
                                                  dtype=dt))
    x = draw((b, 1, h, w)) if x_init is None else x_init.to(dev, dt).clone()
    tab = {k: v.to(dev) for k, v in learned_range_tables(schedule).items()}
    steps = list(range(schedule.T - 1, -1, -1))
    for i in (progress(steps) if progress else steps):
        t = torch.full((b,), i, device=dev, dtype=torch.long)
        at = {k: v[t].float().view(b, 1, 1, 1) for k, v in tab.items()}
        eps, v = eps_var_model(x, image, t)
        x0 = (at["sqrt_recip_ac"] * x - at["sqrt_recipm1_ac"] * eps).clamp(-1, 1)
        mean = at["coef1"] * x0 + at["coef2"] * x
        frac = (v + 1) / 2
        log_var = frac * at["max_log"] + (1 - frac) * at["min_log"]
        noise = draw((b, 1, h, w))
        nonzero = (t != 0).float().view(b, 1, 1, 1)
        x = mean + nonzero * torch.exp(0.5 * log_var) * noise
    return x
