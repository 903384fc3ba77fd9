"""How an original code samples, beyond its schedule: what a family declares
(`ModelFamily.sampling_conventions`) and the pipeline hands to the samplers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

DDPM_FORMS = ("published", "clipped", "learned_range")


@dataclass(frozen=True)
class SamplingConventions:
    """ddpm: its DDPM ("published": the plain eps form; "clipped": the x0-clipped
    posterior; "learned_range": guided-diffusion's learned variance); keep_eps: whether its
    clipped DDIM keeps the network's eps; ddim_timesteps: its own DDIM grid
    `(T, steps) -> timesteps` (None: diffusion.ddim_timesteps); self_condition: whether the
    network is fed its own previous x0 estimate."""
    ddpm: str = "published"
    keep_eps: bool = False
    ddim_timesteps: Callable | None = None
    self_condition: bool = False

    def __post_init__(self):
        if self.ddpm not in DDPM_FORMS:
            raise ValueError(f"ddpm must be one of {DDPM_FORMS}, got {self.ddpm!r}")
