"""Running an ensemble of chains: initial noise per image, the sampler choice, the checks.

    model_input (N, 3, S, S) --repeat each image E times--> (N*E, 3, S, S)
    x_T per image from its own generator (seeded by the call's seed and the image's key)
    one sampler run over all N*E chains: every network forward sees the whole batch
    -> (N, E, S, S) samples in mask space [-1, 1]; (N, E, K, S, S) for a model of K > 1
       mask channels (classes.py), whose chains are (K, S, S) each

Networks predict noise, the clean mask or v (what their family says); the samplers work on
noise estimates, so `as_eps_model` converts the other two at each step with the schedule's
tables (the same conversions the original codes use).
"""
from __future__ import annotations

import contextlib
import zlib

import torch

from .ddim import SPACINGS, DDIMSampler, trailing_timesteps
from .ddpm import ddpm_sample, ddpm_sample_clipped, ddpm_sample_learned_range
from .dpm_solver import dpm_solver_pp_2m
from .schedule import Schedule
from .tta import member_views, undo_member_views

PREDICTIONS = ("eps", "x0", "v")
# noise_seed(seed, key) = seed * 1_000_003 + (key < 2^32) must fit torch's 64-bit seeds.
MAX_SEED = (2 ** 64 - 2 ** 32) // 1_000_003 - 1
SAMPLERS = ("ddim", "ddpm", "dpmpp")


class NoisePredictor:
    """Wraps `net(x_t, image, t[, x_self_cond])` into the noise predictor the samplers call.

        x_t = sqrt(abar) x0 + sqrt(1 - abar) eps        (schedule.py)
        x0 prediction: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
        v  prediction: v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  eps = sqrt(1 - abar) x_t
                       + sqrt(abar) v,  x0 = sqrt(abar) x_t - sqrt(1 - abar) v
    Self-conditioning (lucidrains): the network also sees the previous step's x0 estimate,
    clamped to [-1, 1], zeros at the first step; the samplers call `reset()` when a run
    starts. The estimate lives in one static buffer (CUDA-graph safe), the tables are cast
    once per (device, dtype) and indexed by `t` on the device (no host synchronisation).
    """

    def __init__(self, net, prediction: str, schedule: Schedule, self_condition: bool = False):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.net, self.prediction, self.self_condition = net, prediction, self_condition
        ac = schedule.alphas_cumprod
        self._tables64 = (ac.sqrt(), (1 - ac).sqrt())
        self._tables: dict = {}
        self._prev = None            # (B, C, H, W) previous clamped x0 estimate
        self._fresh = True

    def reset(self) -> None:
        self._fresh = True

    def _at(self, t: torch.Tensor, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = tuple(v.to(like.device, like.dtype) for v in self._tables64)
        a, s = self._tables[key]
        shape = (-1,) + (1,) * (like.dim() - 1)
        return a[t].view(shape), s[t].view(shape)

    def __call__(self, x_t, image, t):
        if not self.self_condition:
            out = self.net(x_t, image, t)
        else:
            if self._prev is None or self._prev.shape != x_t.shape or \
                    self._prev.device != x_t.device or self._prev.dtype != x_t.dtype:
                self._prev = torch.zeros_like(x_t)
            if self._fresh:
                self._prev.zero_()
                self._fresh = False
            out = self.net(x_t, image, t, self._prev)
        if self.prediction == "eps" and not self.self_condition:
            return out
        a, s = self._at(t, x_t)
        if self.prediction == "eps":
            eps, x0 = out, (x_t - s * out) / a
        elif self.prediction == "x0":
            eps, x0 = (x_t - a * out) / s, out
        else:
            eps, x0 = s * x_t + a * out, a * x_t - s * out
        if self.self_condition:
            self._prev.copy_(x0.clamp(-1, 1))
        return eps


def as_eps_model(net, prediction: str, schedule: Schedule, self_condition: bool = False):
    """The callable the samplers use: `net` itself when it predicts noise unconditioned."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if prediction == "eps" and not self_condition:
        return net
    return NoisePredictor(net, prediction, schedule, self_condition)


@contextlib.contextmanager
def flush_denormals():
    """Treat float denormals as zero while sampling.

    Softmax and SiLU tails can produce denormal floats, which x86 CPUs process ~100x slower:
    a forward of a small model was measured at 3.7 s instead of 0.056 s at some timesteps.
    Flushing changes values below 1.2e-38 only. torch has no getter for the flag, so it is
    set back to False (torch's default) afterwards.
    """
    enabled = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)


def noise_seed(seed: int, key) -> int:
    """The generator seed of one image's chains, from the call's seed and the image's key:
    an int is used modulo 2^32 (so a negative or huge key still makes a valid seed), a string (a file's output name, a content digest) through
    crc32 of its UTF-8 bytes; undecodable characters (a non-UTF-8 file name surfaces as
    lone surrogates) are escaped rather than refused."""
    if isinstance(key, int):
        return seed * 1_000_003 + key % 2 ** 32    # any int; 0 .. 2^32-1 kept as they are
    text = str(key)
    try:
        data = text.encode("utf-8", errors="surrogateescape")   # a file name's own bytes
    except UnicodeEncodeError:
        data = text.encode("utf-8", errors="surrogatepass")
    return seed * 1_000_003 + zlib.crc32(data)


def initial_noise(keys: list, ensemble: int, size: int, seed: int,
                  channels: int = 1) -> torch.Tensor:
    """x_T (N*E, channels, S, S) for each image from its own generator: a mask depends on the
    seed and the image's key only, not on which other images share its batch. Image i's E
    chains are one normal_ draw of E * channels * S * S values, chain-major, so one channel
    (channels=1) draws exactly what it always did."""
    noise = torch.empty(len(keys) * ensemble, channels, size, size)
    for i, key in enumerate(keys):
        gen = torch.Generator().manual_seed(noise_seed(seed, key))
        noise[i * ensemble:(i + 1) * ensemble].normal_(generator=gen)
    return noise


def ddim_grid(spacing: str, sampler: str, family_grid=None):
    """The DDIM grid function `(T, steps) -> timesteps` that `spacing` asks for, or None for
    ddim.ddim_timesteps ("leading"). A family whose original code walks its own grid
    (`family_grid`) has only that one, and spacing applies only to the DDIM sampler: both
    are refused with a ValueError (segment() calls this before any work)."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if spacing == "leading":
        return family_grid
    if family_grid is not None:
        raise ValueError("this model family's DDIM walks its original code's own grid; "
                         f"spacing={spacing!r} is not available for it")
    if sampler != "ddim":
        raise ValueError(f"spacing applies to the DDIM sampler, not {sampler!r}")
    return trailing_timesteps


@torch.no_grad()
def sample_ensemble(eps_model, schedule: Schedule, model_input: torch.Tensor, steps: int,
                    ensemble: int, seed: int, noise_keys: list | None = None,
                    sampler: str = "ddim", eta: float = 0.0, clip_x0: bool = True,
                    progress=None, ddpm: str = "published", keep_eps: bool = False,
                    ddim_timesteps=None, spacing: str = "leading",
                    tta: bool = False, mask_channels: int = 1) -> torch.Tensor:
    """(N, C, S, S) network inputs -> (N, ensemble, S, S) samples in mask space [-1, 1]
    ((N, ensemble, K, S, S) for mask_channels K > 1: each chain denoises K class masks).

    eps_model(x_t, image, t) -> eps_hat (see `as_eps_model`). Image i's noise is keyed by
    noise_keys[i] (default: its index i). clip_x0 applies to DDIM (see DDIMSampler); the
    DDPM sampler is the family's: "published" (DermoSegDiff's, never clipped) or "clipped"
    (the x0-clipped posterior step of MedSegDiff's codes) or "learned_range" (the official
    MedSegDiff's, eps_model.eps_and_variance giving the variance channel); "dpmpp" is
    DPM-Solver++(2M) with `steps` evaluations (dpm_solver.py). keep_eps and ddim_timesteps(T,
    steps) are the family's DDIM conventions (DDIMSampler). spacing "trailing" walks DDIM on
    ddim.trailing_timesteps (from t = T-1) instead of the "leading" grid (ending at t = 0);
    a family with its own grid has only that one. tta: member e sees the image under
    symmetry e mod 8 and its sample is mapped back (tta.py). On a CUDA device, eta = 0 DDIM
    replays one captured CUDA graph per (network, batch, size, steps) (graph.py).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    ddim_timesteps = ddim_grid(spacing, sampler, ddim_timesteps)
    n, _, s, _ = model_input.shape
    if tta:
        image = member_views(model_input, ensemble)                # (N*E, 3, S, S)
    else:
        image = model_input.repeat_interleave(ensemble, dim=0)    # (N*E, 3, S, S)
    keys = list(range(n)) if noise_keys is None else list(noise_keys)
    if len(keys) != n:
        raise ValueError(f"{len(keys)} noise keys for {n} images")
    if not isinstance(mask_channels, int) or mask_channels < 1:
        raise ValueError(f"mask_channels must be an integer >= 1, got {mask_channels!r}")
    x_init = initial_noise(keys, ensemble, s, seed, mask_channels).to(image)
    gen = torch.Generator(device=image.device).manual_seed(seed)
    grid = ddim_timesteps(schedule.T, steps) if ddim_timesteps is not None else None
    with flush_denormals():
        if sampler == "ddpm" and ddpm == "learned_range":
            x = ddpm_sample_learned_range(eps_model.eps_and_variance, image, schedule, gen,
                                          progress=progress, x_init=x_init)
        elif sampler == "ddpm":
            run = ddpm_sample_clipped if ddpm == "clipped" else ddpm_sample
            x = run(eps_model, image, schedule, gen, progress=progress, x_init=x_init)
        elif sampler == "dpmpp":
            x = dpm_solver_pp_2m(eps_model, image, schedule, steps, x_init, clip_x0, progress)
        elif image.is_cuda and eta == 0:
            from .graph import static_ddim
            x = static_ddim(eps_model, schedule, steps, image, clip_x0, keep_eps,
                            grid, mask_channels).run(image, x_init)
        else:
            x = DDIMSampler(schedule, steps, eta, clip_x0, keep_eps, grid).sample(
                eps_model, image, gen, progress=progress, x_init=x_init)
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            "the sampler produced NaN or infinite values: the model's noise predictions "
            "diverged (an untrained or corrupted checkpoint, or a schedule that does not "
            "match the one it was trained with)")
    if tta:
        x = undo_member_views(x, ensemble)
    if mask_channels == 1:
        return x.view(n, ensemble, s, s)
    return x.view(n, ensemble, mask_channels, s, s)
