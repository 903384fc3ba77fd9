"""The official MedSegDiff code's diffusion (medsegdiff.md 2.9-2.10): its schedule, the
denoiser the engine's samplers call, and its output rules.

- Schedule: `get_named_beta_schedule` ("linear" stretched to T: linspace(1e-4 k, 0.02 k, T),
  k = 1000 / T; "cosine": betas_for_alpha_bar, max 0.999), then `SpacedDiffusion`, which
  every run goes through, recomputes the betas as 1 - abar_t / abar_{t-1} in float64.
- Mask space {0, 1} (ToTensor masks), x0 clamped to [-1, 1] while sampling; results map a
  sample s to 2 s - 1 so the engine's "mask > 0" rule is the usual s > 0.5.
- DDPM: learned-range variance from output channel 1 (diffusion/ddpm.py).
- cal (the anchor network's sigmoid map) and the V1 rule that mixes it with the sample
  (`cal_out`), and its ensemble rule "staple", which is one pass of its loop: the pixel mean
  of the samples, squared.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...diffusion import Schedule


def official_schedule(timesteps: int, kind: str = "linear") -> Schedule:
    if kind == "linear":
        base = Schedule.scaled_linear(timesteps).betas
    elif kind == "cosine":
        def abar(x):
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2
        base = torch.tensor([min(1 - abar((i + 1) / timesteps) / abar(i / timesteps), 0.999)
                             for i in range(timesteps)], dtype=torch.float64)
    else:
        raise ValueError(f"noise_schedule must be 'linear' or 'cosine', got {kind!r}")
    ac = torch.cumprod(1 - base, dim=0)
    prev = torch.cat((ac.new_ones(1), ac[:-1]))
    return Schedule(1 - ac / prev)


class OfficialDenoiser(nn.Module):
    """net(x_t, image, t) -> eps (channel 0) for the engine's samplers; `eps_and_variance`
    gives (eps, v) for the learned-range DDPM. V2's anchor network depends on the image
    only, so its features are computed once per image batch and reused at every step (the
    original recomputes them every step); V1's depends on x_t and runs every step. `cal`
    keeps the last anchor map."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.cal = None
        self._key = None
        self._anchor = None

    @property
    def config(self):
        return self.net.config

    def _anchors(self, image: torch.Tensor):
        capturing = image.is_cuda and torch.cuda.is_current_stream_capturing()
        key = (image.data_ptr(), tuple(image.shape), image.dtype, image._version)
        if capturing or key != self._key:
            self._anchor, self.cal = self.net.anchors(image)
            self._key = None if capturing else key
        return self._anchor

    def eps_and_variance(self, x_t, image, t):
        if self.net.config.version == "v1":     # V1's anchor depends on x_t: every step
            out, self.cal = self.net(x_t, image, t)
            return out[:, :1], out[:, 1:2]
        out = self.net.unet(x_t, image, t, self._anchors(image))
        return out[:, :1], out[:, 1:2]

    def forward(self, x_t, image, t):
        return self.eps_and_variance(x_t, image, t)[0]


def cal_out(sample: torch.Tensor, cal: torch.Tensor) -> torch.Tensor:
    """The original's `cal_out` (used by its V1 ensemble): the Dice of (sample > 0) with cal
    over the WHOLE batch decides the mix: < 0.65 -> clamp(cal + sample / 4), else
    clamp(cal / 2 + sample / 2), both clamped to [0, 1]."""
    pred = (sample > 0).float()
    dice = 2.0 * (pred * cal).sum() / (pred + cal).sum()
    if dice < 0.65:
        return torch.clamp(cal + 0.25 * sample, 0, 1)
    return torch.clamp(cal * 0.5 + 0.5 * sample, 0, 1)


def staple_mean_squared(samples: torch.Tensor) -> torch.Tensor:
    """The original's `staple` on (E, ...) samples: its loop runs once, giving mean(s)^2
    (each sample times the mean, averaged). Not STAPLE (Warfield 2004): see uncertainty.py."""
    m = samples.sum(0, keepdim=True) / samples.shape[0]
    r = torch.cat([s * m for s in samples], 0)
    return r.sum(0, keepdim=True) / r.shape[0]
