"""What every diffusion training step draws: timesteps and noise, from a CPU generator."""
from __future__ import annotations

import torch


def draw_t_and_noise(gen: torch.Generator, low: int, high: int,
                     x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U{low..high-1} per sample and eps ~ N(0, 1) shaped like x0, drawn from the CPU
    generator `gen` (a run draws the same numbers on every device, so a GPU run repeats a CPU
    one's batches and timesteps) and moved to x0's device."""
    t = torch.randint(low, high, (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    return t.to(x0.device), noise.to(x0.device)
