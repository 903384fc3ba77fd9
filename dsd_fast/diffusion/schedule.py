"""The training noise schedule (kept apart from the network and the samplers).

Notation (Ho et al. 2020; Song et al. 2021):
    beta_t          noise variance added at step t          `betas`
    alpha_t         1 - beta_t                              `alphas`
    abar_t          prod_{s<=t} alpha_s                     `alphas_cumprod`
    abar_prev_t     abar_{t-1}, with abar_{-1} = 1          `alphas_cumprod_prev`
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps           `q_sample`
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PUBLISHED_T = 250
PUBLISHED_BETA_START, PUBLISHED_BETA_END = 4e-4, 8e-2


@dataclass(frozen=True)
class Schedule:
    """The training noise schedule as float64 tables (cast once when a sampler is built)."""
    betas: torch.Tensor          # (T,)

    def __post_init__(self):
        b = self.betas
        if not isinstance(b, torch.Tensor) or b.dim() != 1 or b.numel() == 0:
            raise ValueError("a schedule needs a non-empty 1-D tensor of betas, got "
                             f"{getattr(b, 'shape', type(b).__name__)}")
        if not (torch.isfinite(b).all() and (b > 0).all() and (b < 1).all()):
            raise ValueError(f"betas must be finite and in (0, 1), got range "
                             f"[{b.min().item():.4g}, {b.max().item():.4g}]")
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

    @classmethod
    def cosine(cls, timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> "Schedule":
        """Nichol & Dhariwal's cosine schedule, in float64 as lucidrains' code builds it:
        abar(x) = cos^2(((x / T) + s) / (1 + s) * pi / 2) / abar(0) on x = 0..T,
        beta_t = 1 - abar(t + 1) / abar(t), clipped to [0, max_beta]."""
        x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
        abar = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
        abar = abar / abar[0]
        return cls(torch.clip(1 - abar[1:] / abar[:-1], 0, max_beta))

    @classmethod
    def scaled_linear(cls, timesteps: int) -> "Schedule":
        """The DDPM linear schedule stretched to T steps, in float64 (lucidrains' and the
        official MedSegDiff's "linear"): linspace(1e-4 k, 0.02 k, T), k = 1000 / T."""
        k = 1000 / timesteps
        return cls(torch.linspace(1e-4 * k, 0.02 * k, timesteps, dtype=torch.float64))

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
        if not isinstance(d, dict) or d.get("kind") != "table" or "betas" not in d:
            raise ValueError(f"unrecognised schedule description: "
                             f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
        return cls(torch.tensor(d["betas"], dtype=torch.float64))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, per sample t (B,)."""
        ac = self.alphas_cumprod.to(device=x0.device)[t].to(x0.dtype)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return ac.sqrt().view(shape) * x0 + (1 - ac).sqrt().view(shape) * noise
