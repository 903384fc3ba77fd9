"""Diffusion, apart from any network: the schedule, the samplers, the ensemble driver.

    schedule.py   Schedule (betas and the tables derived from them), q_sample
    ddpm.py       the published ancestral sampler
    ddim.py       DDIM with precomputed tables and static buffers (x0 clipping on by default)
    graph.py      the DDIM loop captured as one CUDA graph (same code, uncaptured, on CPU)
    ensemble.py   initial noise keyed per image, all chains in one batch, x0/v -> eps
"""
from .ddim import (SPACINGS, DDIMSampler, DDIMTables, ddim_sample, ddim_timesteps,
                   trailing_timesteps)
from .ddpm import ddpm_sample, ddpm_step_coefficients
from .ensemble import (PREDICTIONS, SAMPLERS, as_eps_model, flush_denormals, initial_noise,
                       noise_seed, sample_ensemble)
from .schedule import PUBLISHED_T, Schedule

__all__ = ["Schedule", "PUBLISHED_T", "DDIMSampler", "DDIMTables", "ddim_sample",
           "ddim_timesteps", "ddpm_sample", "ddpm_step_coefficients", "sample_ensemble",
           "as_eps_model", "initial_noise", "noise_seed", "flush_denormals", "PREDICTIONS",
           "SAMPLERS", "SPACINGS", "trailing_timesteps"]
