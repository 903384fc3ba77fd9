"""The sampling conventions of med-seg-diff-pytorch's `MedSegDiff` wrapper (medsegdiff.md
1.7), expressed through the engine's samplers, so that its DDPM and DDIM run step for step
as the package runs them (tests/families/test_medsegdiff_parity.py checks it against the
package with the same random stream):

  DDPM (`sampler="ddpm"`): the x0-clipped posterior step, no noise at t = 0
      (diffusion.ddpm.ddpm_sample_clipped).
  DDIM: the grid `linspace(-1, T-1, S+1)` truncated to int, reversed, the pair ending at -1
      returning the (clamped) x0 estimate; x0 clamped every step while a noise-predicting
      network's own eps continues the update (`keep_eps`); for x0 / v objectives eps is
      re-derived from the clamped x0. The package's default eta is 1 (stochastic): pass
      eta=1.0 to segment() for that; this engine's default is eta = 0.
  Self-conditioning: the previous step's clamped x0 estimate, zeros first
      (diffusion.ensemble.NoisePredictor).
"""
from __future__ import annotations

import torch

from ...diffusion.conventions import SamplingConventions
from .config import MedSegDiffConfig

PACKAGE_DDIM_ETA = 1.0


def package_ddim_timesteps(T: int, steps: int) -> torch.Tensor:
    """The steps the package's ddim_sample visits, descending. Built with torch float32
    linspace and .int() exactly as the package does: the rounding of the float32 grid
    decides the truncation (T = 1000, S = 25: 999, 959, ..., 39)."""
    times = torch.linspace(-1, T - 1, steps=steps + 1).int().tolist()
    return torch.tensor(list(reversed(times))[:-1], dtype=torch.long)


def conventions(config: MedSegDiffConfig) -> SamplingConventions:
    return SamplingConventions(ddpm="clipped", keep_eps=config.objective == "pred_noise",
                               ddim_timesteps=package_ddim_timesteps,
                               self_condition=config.self_condition)
