"""DDIM (Song et al. 2021) with precomputed tables and static buffers.

Samplers take the network as a callable `eps_model(x_t, image, t) -> eps_hat` and draw every
random number from an explicit torch.Generator: the same seed gives the same masks. The
notation is schedule.py's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .schedule import Schedule


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


SPACINGS = ("leading", "trailing")


def trailing_timesteps(T: int, steps: int) -> torch.Tensor:
    """The "trailing" grid (Lin et al. 2024, diffusers' timestep_spacing="trailing"):
    t_i = round(T - i * T / steps) - 1 for i = 0..steps-1, so the first step is always
    T - 1 (pure noise is where sampling starts) and the last is at or above 0. For T = 250,
    steps = 25: 249, 239, ..., 9; steps = 1: [249]. `ddim_timesteps` is the "leading" grid."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T} (the schedule's length), got {steps}")
    ts = (T - torch.arange(steps, dtype=torch.float64) * T / steps).round().long() - 1
    return ts


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
    def build(cls, schedule: Schedule, steps: int, eta: float = 0.0,
              timesteps: torch.Tensor | None = None) -> "DDIMTables":
        """`timesteps`: the descending steps to visit (default `ddim_timesteps`); a family
        whose original code walks another grid gives its own (medsegdiff/sampling.py)."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        ts = ddim_timesteps(schedule.T, steps) if timesteps is None else timesteps.long()
        if ts.numel() != steps or not (ts[:-1] > ts[1:]).all() or ts.min() < 0 \
                or ts.max() >= schedule.T:
            raise ValueError(f"DDIM timesteps must be {steps} descending steps in "
                             f"0..{schedule.T - 1}, got {ts.tolist()}")
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


class DDIMSampler:
    """DDIM over `steps` evenly spaced training steps with static buffers.

    The tables, the noise buffer, the timestep buffer and x live for the sampler's life;
    the loop does no `.item()`, no Python branch on tensor values and no allocation
    beyond what the network itself allocates. Build once per (batch, size, steps, eta, clip).

    clip_x0: clamp each step's x0 estimate to the mask range [-1, 1] and continue from the
    eps it implies (the usual DDIM practice; the published DermoSegDiff DDPM sampler does not
    clip). On by default, here as in `segment()` and the CLI (MODEL_CARD.md gives the
    measured effect); clip_x0=False is textbook DDIM.
    keep_eps: with clip_x0, continue from the network's own eps instead (lucidrains'
    ddim_sample does this for noise-predicting models: x_next = sqrt(abar_n) clamp(x0_hat)
    + sqrt(1 - abar_n - sigma^2) eps).
    timesteps: the grid to walk (DDIMTables.build).

    A stateful eps model (self-conditioning, diffusion/ensemble.py) is reset at the start of
    each run through its `reset()`.
    """

    def __init__(self, schedule: Schedule, steps: int, eta: float = 0.0, clip_x0: bool = True,
                 keep_eps: bool = False, timesteps: torch.Tensor | None = None):
        self.schedule = schedule
        self.steps = steps
        self.eta = float(eta)
        self.clip_x0 = bool(clip_x0)
        self.keep_eps = bool(keep_eps)
        self.tables64 = DDIMTables.build(schedule, steps, eta, timesteps)
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
        """image (B, 3, H, W) -> x_0 (B, K, H, W); x_T ~ N(0, I) from `generator` (K = 1) or
        x_init (B, K, H, W) (K mask channels: one per class)."""
        b, _, h, w = image.shape
        k = 1 if x_init is None else x_init.shape[1]
        self._prepare((b, k, h, w), image.device, image.dtype)
        x, z, tab = self.x, self.z, self.tables
        if x_init is None:
            x.normal_(generator=generator)
        else:
            x.copy_(x_init)
        if hasattr(eps_model, "reset"):
            eps_model.reset()
        stochastic = self.eta > 0          # Python flags, fixed per sampler: no tensor branch
        for i in range(self.steps):
            eps = eps_model(x, image, self.t_per_step[i])
            if self.clip_x0:
                x0, e = self.x0, self.e
                torch.mul(x, tab.inv_s0[i], out=x0).addcmul_(eps, tab.neg_r[i]).clamp_(-1, 1)
                if not self.keep_eps:
                    eps = torch.addcmul(x, x0, tab.neg_s0[i], out=e).mul_(tab.inv_s1[i])
                torch.mul(x0, tab.s0_next[i], out=x).addcmul_(eps, tab.dir_next[i])
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
                clip_x0=True, keep_eps=False, timesteps=None):
    return DDIMSampler(schedule, steps, eta, clip_x0, keep_eps, timesteps).sample(
        eps_model, image, generator, progress)
