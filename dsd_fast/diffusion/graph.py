"""DDIM captured as one CUDA graph, replayed per call; the same static-buffer path on CPU.

On a CUDA device the whole DDIM loop (every network forward and every update) is captured
once per (network, batch, size, steps, dtype, device) and replayed: one launch per image
batch instead of thousands of kernel launches. Capture needs fixed addresses, so the
image, the initial noise and the result live in static buffers; callers copy in and out.
The coefficient tables are on the device (DDIMSampler puts them there).

Only eta = 0 is captured: eta > 0 draws fresh noise at every step from a user generator,
which a replayed graph would not advance the same way as the eager sampler; those runs go
through the eager loop (`DDIMSampler.sample`).

On CPU (no capture) `run` executes exactly the same code on the same static buffers, which is
how the path is tested on machines without a GPU: its output equals the eager sampler's.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from .ddim import DDIMSampler
from .schedule import Schedule

WARMUP_RUNS = 2          # lets cuDNN/cuBLAS pick algorithms and allocate before capture
CACHE_SIZE = 4           # captured graphs hold their memory pool: keep few


class StaticDDIM:
    def __init__(self, eps_model, schedule: Schedule, steps: int, batch: int, size: int,
                 dtype: torch.dtype, device: torch.device, clip_x0: bool = True,
                 keep_eps: bool = False, timesteps: torch.Tensor | None = None,
                 image_channels: int = 3, mask_channels: int = 1):
        self.eps_model = eps_model
        self.sampler = DDIMSampler(schedule, steps, eta=0.0, clip_x0=clip_x0, keep_eps=keep_eps,
                                   timesteps=timesteps)
        self.image = torch.zeros(batch, image_channels, size, size, dtype=dtype, device=device)
        self.x_init = torch.zeros(batch, mask_channels, size, size, dtype=dtype, device=device)
        self.graph = None
        self.out = None
        if device.type == "cuda":
            self._capture()

    def _loop(self) -> torch.Tensor:
        # No generator is needed: eta = 0 and x starts from the static x_init.
        return self.sampler.sample(self.eps_model, self.image, None, x_init=self.x_init)

    @torch.no_grad()
    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._loop()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._loop()

    @torch.no_grad()
    def run(self, image: torch.Tensor, x_init: torch.Tensor) -> torch.Tensor:
        self.image.copy_(image)
        self.x_init.copy_(x_init)
        if self.graph is None:
            return self._loop()
        self.graph.replay()
        return self.out.clone()           # the static output is overwritten by the next replay


_cache: "OrderedDict[tuple, StaticDDIM]" = OrderedDict()


def static_ddim(eps_model, schedule: Schedule, steps: int, image: torch.Tensor,
                clip_x0: bool = True, keep_eps: bool = False,
                timesteps: torch.Tensor | None = None, mask_channels: int = 1) -> StaticDDIM:
    """Cached StaticDDIM for this (network, batch, size, steps, clip, grid, dtype, device); a
    new key captures a new graph, the least recently used one beyond CACHE_SIZE is dropped."""
    b, ch, s, _ = image.shape
    key = (id(eps_model), b, ch, mask_channels, s, steps, bool(clip_x0), bool(keep_eps), image.dtype,
           image.device, tuple(schedule.betas.tolist()),
           None if timesteps is None else tuple(timesteps.tolist()))
    hit = _cache.get(key)
    if hit is None or hit.eps_model is not eps_model:
        hit = StaticDDIM(eps_model, schedule, steps, b, s, image.dtype, image.device, clip_x0,
                         keep_eps, timesteps, ch, mask_channels)
        _cache[key] = hit
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    return hit


def clear_cache() -> None:
    _cache.clear()
