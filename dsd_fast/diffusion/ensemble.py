"""Running an ensemble of chains: initial noise per image, the sampler choice, the checks.

    model_input (N, 3, S, S) --repeat each image E times--> (N*E, 3, S, S)
    x_T per image from its own generator (seeded by the call's seed and the image's key)
    one sampler run over all N*E chains: every network forward sees the whole batch
    -> (N, E, S, S) samples in mask space [-1, 1]

Networks predict noise, the clean mask or v (what their family says); the samplers work on
noise estimates, so `as_eps_model` converts the other two at each step with the schedule's
tables (the same conversions the original codes use).
"""
from __future__ import annotations

import contextlib
import zlib

import torch

from .ddim import DDIMSampler
from .ddpm import ddpm_sample
from .schedule import Schedule

PREDICTIONS = ("eps", "x0", "v")
# noise_seed(seed, key) = seed * 1_000_003 + (key < 2^32) must fit torch's 64-bit seeds.
MAX_SEED = (2 ** 64 - 2 ** 32) // 1_000_003 - 1
SAMPLERS = ("ddim", "ddpm")


class EpsFromPrediction:
    """Wraps `net(x_t, image, t)` that predicts x0 or v into one that returns eps.

        x_t = sqrt(abar) x0 + sqrt(1 - abar) eps        (schedule.py)
        x0 prediction: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
        v  prediction: v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  eps = sqrt(1 - abar) x_t
                       + sqrt(abar) v
    Tables are float64, cast once per (device, dtype); `t` indexes them on the device, so
    the call has no host synchronisation (CUDA-graph safe).
    """

    def __init__(self, net, prediction: str, schedule: Schedule):
        if prediction not in ("x0", "v"):
            raise ValueError(f"prediction must be 'x0' or 'v' here, got {prediction!r}")
        self.net, self.prediction = net, prediction
        ac = schedule.alphas_cumprod
        self._tables64 = (ac.sqrt(), (1 - ac).sqrt())
        self._tables: dict = {}

    def _at(self, t: torch.Tensor, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = tuple(v.to(like.device, like.dtype) for v in self._tables64)
        a, s = self._tables[key]
        shape = (-1,) + (1,) * (like.dim() - 1)
        return a[t].view(shape), s[t].view(shape)

    def __call__(self, x_t, image, t):
        out = self.net(x_t, image, t)
        a, s = self._at(t, x_t)
        if self.prediction == "x0":
            return (x_t - a * out) / s
        return s * x_t + a * out


def as_eps_model(net, prediction: str, schedule: Schedule):
    """The callable the samplers use: `net` itself when it predicts noise."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return net if prediction == "eps" else EpsFromPrediction(net, prediction, schedule)


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


def initial_noise(keys: list, ensemble: int, size: int, seed: int) -> torch.Tensor:
    """x_T for each image from its own generator: a mask depends on the seed and the image's
    key only, not on which other images share its batch."""
    noise = torch.empty(len(keys) * ensemble, 1, size, size)
    for i, key in enumerate(keys):
        gen = torch.Generator().manual_seed(noise_seed(seed, key))
        noise[i * ensemble:(i + 1) * ensemble].normal_(generator=gen)
    return noise


@torch.no_grad()
def sample_ensemble(eps_model, schedule: Schedule, model_input: torch.Tensor, steps: int,
                    ensemble: int, seed: int, noise_keys: list | None = None,
                    sampler: str = "ddim", eta: float = 0.0, clip_x0: bool = True,
                    progress=None) -> torch.Tensor:
    """(N, 3, S, S) network inputs -> (N, ensemble, S, S) samples in mask space [-1, 1].

    eps_model(x_t, image, t) -> eps_hat (see `as_eps_model`). Image i's noise is keyed by
    noise_keys[i] (default: its index i). clip_x0 applies to DDIM (see DDIMSampler); the
    published DDPM sampler never clips. On a CUDA device, eta = 0 DDIM replays one captured
    CUDA graph per (network, batch, size, steps) (graph.py).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    n, _, s, _ = model_input.shape
    image = model_input.repeat_interleave(ensemble, dim=0)        # (N*E, 3, S, S)
    keys = list(range(n)) if noise_keys is None else list(noise_keys)
    if len(keys) != n:
        raise ValueError(f"{len(keys)} noise keys for {n} images")
    x_init = initial_noise(keys, ensemble, s, seed).to(image)
    gen = torch.Generator(device=image.device).manual_seed(seed)
    with flush_denormals():
        if sampler == "ddpm":
            x = ddpm_sample(eps_model, image, schedule, gen, progress=progress, x_init=x_init)
        elif image.is_cuda and eta == 0:
            from .graph import static_ddim
            x = static_ddim(eps_model, schedule, steps, image, clip_x0).run(image, x_init)
        else:
            x = DDIMSampler(schedule, steps, eta, clip_x0).sample(
                eps_model, image, gen, progress=progress, x_init=x_init)
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            "the sampler produced NaN or infinite values: the model's noise predictions "
            "diverged (an untrained or corrupted checkpoint, or a schedule that does not "
            "match the one it was trained with)")
    return x.view(n, ensemble, s, s)
