"""Diffusion schedule and samplers (kept apart from the network).

Notation (Ho et al. 2020; Song et al. 2021):
    beta_t          noise variance added at step t          `betas`
    alpha_t         1 - beta_t                              `alphas`
    abar_t          prod_{s<=t} alpha_s                     `alphas_cumprod`
    abar_prev_t     abar_{t-1}, with abar_{-1} = 1          `alphas_cumprod_prev`
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps           `q_sample`

Samplers take the network as a callable `eps_model(x_t, image, t) -> eps_hat` and draw every
random number from an explicit torch.Generator: the same seed gives the same masks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

PUBLISHED_T = 250
PUBLISHED_BETA_START, PUBLISHED_BETA_END = 4e-4, 8e-2


@dataclass(frozen=True)
class Schedule:
    """The training noise schedule as float64 tables (cast once when a sampler is built)."""
    betas: torch.Tensor          # (T,)

    @classmethod
    def linear(cls, timesteps: int = PUBLISHED_T, beta_start: float = PUBLISHED_BETA_START,
               beta_end: float = PUBLISHED_BETA_END) -> "Schedule":
        # The published code builds the betas with torch.linspace in float32; keep those
        # exact float32 values and do the products in float64.
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float32)
        return cls(betas.double())

    @classmethod
    def published(cls) -> "Schedule":
        return cls.linear()

    @property
    def T(self) -> int:
        return self.betas.numel()

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        ac = self.alphas_cumprod
        return torch.cat((ac.new_ones(1), ac[:-1]))

    @property
    def posterior_variance(self) -> torch.Tensor:
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    def to_dict(self) -> dict:
        return {"kind": "table", "betas": [float(b) for b in self.betas]}

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        if d.get("kind") != "table" or "betas" not in d:
            raise ValueError(f"unrecognised schedule description: keys {sorted(d)}")
        return cls(torch.tensor(d["betas"], dtype=torch.float64))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, per sample t (B,)."""
        ac = self.alphas_cumprod.to(device=x0.device)[t].to(x0.dtype)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return ac.sqrt().view(shape) * x0 + (1 - ac).sqrt().view(shape) * noise


def ddim_timesteps(T: int, steps: int) -> torch.Tensor:
    """The training steps DDIM visits, in the order it visits them (descending).

    t_i = floor(i * T / steps) for i = 0..steps-1, reversed: evenly spaced, always starting
    at 0 (the step whose prediction is returned) and ending at or below T-1. steps = T walks
    every step T-1, ..., 0. For T = 250, steps = 25: 240, 230, ..., 10, 0. The step after t_i
    is the next entry, and after 0 comes "clean" (abar = 1); no arithmetic assumes even spacing.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T} (the schedule's length), got {steps}")
    ts = (torch.arange(steps, dtype=torch.float64) * T / steps).floor().long()
    return ts.flip(0)


@dataclass(frozen=True)
class DDIMTables:
    """Every per-step coefficient of DDIM, precomputed (float64 -> cast once to the run dtype).

    Step i maps x at t_i to x at t_{i+1} (t_{steps} = "clean", abar = 1):
        x0_hat  = (x - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        sigma   = eta * sqrt((1 - abar_n)/(1 - abar_t)) * sqrt(1 - abar_t/abar_n)
        x_next  = sqrt(abar_n) x0_hat + sqrt(1 - abar_n - sigma^2) eps + sigma z
    folded into x_next = c_x * x + c_eps * eps + sigma * z. With x0 clipping (the clipped
    x0_hat and the eps it implies, eps' = (x - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t), feed
    the same update) the loop uses the unfolded factors below.
    """
    timesteps: torch.Tensor   # (S,) int64
    c_x: torch.Tensor         # (S,)
    c_eps: torch.Tensor       # (S,)
    sigma: torch.Tensor       # (S,)
    inv_s0: torch.Tensor      # 1 / sqrt(abar_t)
    neg_r: torch.Tensor       # -sqrt(1 - abar_t) / sqrt(abar_t)
    neg_s0: torch.Tensor      # -sqrt(abar_t)
    inv_s1: torch.Tensor      # 1 / sqrt(1 - abar_t)
    s0_next: torch.Tensor     # sqrt(abar_n)
    dir_next: torch.Tensor    # sqrt(1 - abar_n - sigma^2)

    @classmethod
    def build(cls, schedule: Schedule, steps: int, eta: float = 0.0) -> "DDIMTables":
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        ts = ddim_timesteps(schedule.T, steps)
        ac = schedule.alphas_cumprod
        a_t = ac[ts]
        a_n = torch.cat((ac[ts[1:]], ac.new_ones(1)))
        sigma = eta * ((1 - a_n) / (1 - a_t)).sqrt() * (1 - a_t / a_n).sqrt()
        dir_coef = (1 - a_n - sigma ** 2).clamp_min(0).sqrt()
        c_x = a_n.sqrt() / a_t.sqrt()
        c_eps = dir_coef - a_n.sqrt() * (1 - a_t).sqrt() / a_t.sqrt()
        return cls(ts, c_x, c_eps, sigma, 1 / a_t.sqrt(), -(1 - a_t).sqrt() / a_t.sqrt(),
                   -a_t.sqrt(), 1 / (1 - a_t).sqrt(), a_n.sqrt(), dir_coef)

    def to(self, device, dtype) -> "DDIMTables":
        return DDIMTables(**{f.name: getattr(self, f.name).to(device) if f.name == "timesteps"
                             else getattr(self, f.name).to(device, dtype)
                             for f in dataclasses.fields(self)})


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


class DDIMSampler:
    """DDIM over `steps` evenly spaced training steps with static buffers.

    The tables, the noise buffer, the timestep buffer and x live for the sampler's life;
    the loop does no `.item()`, no Python branch on tensor values and no allocation
    beyond what the network itself allocates. Build once per (batch, size, steps, eta, clip).

    clip_x0: clamp each step's x0 estimate to the mask range [-1, 1] and continue from the
    eps it implies (the usual DDIM practice, e.g. lucidrains' ddim_sample; the published
    DDPM sampler does not clip). Off by default here; `segment()` turns it on (MODEL_CARD.md
    gives the measured effect).
    """

    def __init__(self, schedule: Schedule, steps: int, eta: float = 0.0, clip_x0: bool = False):
        self.schedule = schedule
        self.steps = steps
        self.eta = float(eta)
        self.clip_x0 = bool(clip_x0)
        self.tables64 = DDIMTables.build(schedule, steps, eta)
        self._key = None

    def _prepare(self, shape, device, dtype):
        key = (tuple(shape), device, dtype)
        if key != self._key:
            self.tables = self.tables64.to(device, dtype)
            self.x = torch.empty(shape, device=device, dtype=dtype)
            self.z = torch.empty(shape, device=device, dtype=dtype)
            self.x0 = torch.empty(shape, device=device, dtype=dtype)
            self.e = torch.empty(shape, device=device, dtype=dtype)
            # One (B,) timestep tensor per step, made once: the loop only indexes a list.
            self.t_per_step = [torch.full((shape[0],), int(t), dtype=torch.long, device=device)
                               for t in self.tables64.timesteps]
            self._key = key

    @torch.no_grad()
    def sample(self, eps_model, image: torch.Tensor, generator: torch.Generator,
               progress=None, x_init=None) -> torch.Tensor:
        """image (B, 3, H, W) -> x_0 (B, 1, H, W); x_T ~ N(0, I) from `generator` or x_init."""
        b, _, h, w = image.shape
        self._prepare((b, 1, h, w), image.device, image.dtype)
        x, z, tab = self.x, self.z, self.tables
        if x_init is None:
            x.normal_(generator=generator)
        else:
            x.copy_(x_init)
        stochastic = self.eta > 0          # Python flags, fixed per sampler: no tensor branch
        for i in range(self.steps):
            eps = eps_model(x, image, self.t_per_step[i])
            if self.clip_x0:
                x0, e = self.x0, self.e
                torch.mul(x, tab.inv_s0[i], out=x0).addcmul_(eps, tab.neg_r[i]).clamp_(-1, 1)
                torch.addcmul(x, x0, tab.neg_s0[i], out=e).mul_(tab.inv_s1[i])
                torch.mul(x0, tab.s0_next[i], out=x).addcmul_(e, tab.dir_next[i])
            else:
                # x <- c_x x + c_eps eps, in place
                x.mul_(tab.c_x[i]).addcmul_(eps, tab.c_eps[i])
            if stochastic:
                z.normal_(generator=generator)
                x.addcmul_(z, tab.sigma[i])
            if progress is not None:
                progress()
        return x.clone()


def ddim_sample(eps_model, image, schedule, steps, generator, eta=0.0, progress=None,
                clip_x0=False):
    return DDIMSampler(schedule, steps, eta, clip_x0).sample(eps_model, image, generator, progress)
