"""`segment()`: images in, masks at the original size out.

Pipeline per call:
    images -> (3, H, W) in [0, 1] -> resize to model size, min-max per image   (images.py)
    each image repeated `ensemble` times -> ONE batched sampler run            (diffusion.py)
    samples in [-1, 1] -> foreground probability p = (mean + 1) / 2, std of (x + 1) / 2
    p and std upsampled bilinearly to the original size; mask = p > 0.5
The published rule "mean of samples > 0" is the same threshold as p > 0.5.
"""
from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .diffusion import DDIMSampler, ddpm_sample
from .images import ImageInputError, as_image_list, to_chw, to_model_input

DEFAULT_MODEL_PATH = Path(__file__).parent / "weights" / "default.safetensors"


@dataclass
class SegmentationResult:
    mask: np.ndarray              # (H, W) bool, at the image's original size
    probability: np.ndarray       # (H, W) float32 in [0, 1]: ensemble mean mapped to [0, 1]
    std: np.ndarray               # (H, W) float32: per-pixel std across the ensemble, [0, 1] units
    entropy: np.ndarray           # (H, W) float32: binary entropy (bits) of `probability`
    samples: np.ndarray | None = field(default=None, repr=False)  # (N, H, W) bool when asked
    fusion: str = "mean"          # how `mask` was made: "mean", "staple", or "mean+crf"

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape


FUSIONS = ("mean", "staple")
REFINES = (None, "crf")


def default_model():
    """The bundled default model (trained on PH2; see MODEL_CARD.md)."""
    from .checkpoint import load_model
    if not DEFAULT_MODEL_PATH.exists():
        raise FileNotFoundError(
            f"no bundled default model at {DEFAULT_MODEL_PATH}. Pass a checkpoint instead: "
            "segment(images, model='path/to/model.safetensors' or a published .pt/.pth file), "
            "or on the command line --checkpoint PATH.")
    return load_model(DEFAULT_MODEL_PATH)


def resolve_model(model):
    from .checkpoint import load_model
    if model is None:
        return default_model()
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, torch.nn.Module):
        return model
    raise TypeError(f"model must be None, a checkpoint path or a loaded model, "
                    f"got {type(model).__name__}")


BACKENDS = ("auto", "fast", "reference")


def select_eps_model(model, backend: str):
    """The network the sampler calls: the fast model (folded weights, fused ops) or the
    reference model itself. "auto" takes the fast path when the C++ ops are built."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return model
    from . import ops
    from .fast import fast_model_for
    if backend == "auto" and not ops.AVAILABLE:
        return model
    return fast_model_for(model)


def _check_args(model, steps: int, ensemble: int, sampler: str, fusion: str = "mean",
                refine: str | None = None):
    T = model.schedule.T
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if refine not in REFINES:
        raise ValueError(f"refine must be None or 'crf', got {refine!r}")
    if refine == "crf" and fusion != "mean":
        raise ValueError("refine='crf' follows DiffSeg's protocol (CRF on the means of random "
                         "sample subsets) and replaces the fusion: use it with fusion='mean'")
    if refine == "crf":
        from .crf import _densecrf
        _densecrf()                      # fail before sampling if the extra is missing
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
        raise ValueError(f"ensemble must be an integer >= 1, got {ensemble!r}")


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
    """The generator seed of one image's chains: from the call's seed and the image's key
    (its index in the call by default, or a caller's stable name: crc32 of the string)."""
    k = key if isinstance(key, int) else zlib.crc32(str(key).encode("utf-8"))
    return seed * 1_000_003 + k


def initial_noise(keys: list, ensemble: int, size: int, seed: int) -> torch.Tensor:
    """x_T for each image from its own generator: a mask depends on the seed and the image's
    key only, not on which other images share its batch."""
    noise = torch.empty(len(keys) * ensemble, 1, size, size)
    for i, key in enumerate(keys):
        gen = torch.Generator().manual_seed(noise_seed(seed, key))
        noise[i * ensemble:(i + 1) * ensemble].normal_(generator=gen)
    return noise


@torch.no_grad()
def sample_ensemble(model, model_input: torch.Tensor, steps: int, ensemble: int, seed: int,
                    sampler: str = "ddim", eta: float = 0.0, first_index: int = 0,
                    progress=None, eps_model=None, noise_keys: list | None = None,
                    clip_x0: bool = True) -> torch.Tensor:
    """(N, 3, S, S) normalised images -> (N, ensemble, S, S) samples in mask space [-1, 1].

    All N * ensemble chains run as one batch through the network at every step.
    `eps_model` replaces the network call (the fast path passes its own). Image i's noise
    is keyed by noise_keys[i], default its index first_index + i. clip_x0 applies to DDIM
    (see DDIMSampler); the published DDPM sampler never clips.
    """
    n, _, s, _ = model_input.shape
    eps_model = eps_model or model
    image = model_input.repeat_interleave(ensemble, dim=0)        # (N*E, 3, S, S)
    keys = noise_keys if noise_keys is not None else list(range(first_index, first_index + n))
    x_init = initial_noise(keys, ensemble, s, seed).to(image)
    gen = torch.Generator(device=image.device).manual_seed(seed)
    with flush_denormals():
        if sampler == "ddpm":
            x = ddpm_sample(eps_model, image, model.schedule, gen, progress=progress,
                            x_init=x_init)
        elif image.is_cuda and eta == 0:
            # One captured CUDA graph per (network, batch, size, steps): see graph_sampler.
            from .graph_sampler import static_ddim
            x = static_ddim(eps_model, model.schedule, steps, image, clip_x0).run(image, x_init)
        else:
            x = DDIMSampler(model.schedule, steps, eta, clip_x0).sample(
                eps_model, image, gen, progress=progress, x_init=x_init)
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            "the sampler produced NaN or infinite values: the model's noise predictions "
            "diverged (an untrained or corrupted checkpoint, or a schedule that does not "
            "match the one it was trained with)")
    return x.view(n, ensemble, s, s)


def samples_to_result(samples: torch.Tensor, size_hw: tuple[int, int],
                      return_samples: bool = False, fusion: str = "mean",
                      refine: str | None = None, image: torch.Tensor | None = None,
                      rng: np.random.Generator | None = None) -> SegmentationResult:
    """(E, S, S) samples in mask space of one image -> result at the original (H, W).

    probability = clamp((mean of the raw samples + 1) / 2, 0, 1): thresholding it at 0.5 is
    the published rule "mean > 0" (samples are not clipped, as published).
    std = std over the ensemble of each sample mapped to [0, 1] and clipped there, so a
    wild sample cannot make the spread exceed what a binary disagreement gives (0.5).
    fusion="staple" makes the mask from STAPLE over the binary samples instead of the mean;
    refine="crf" refines with DenseCRF on `image` (3, H, W) (DiffSeg's protocol).
    """
    from .uncertainty import entropy_map, staple_fusion
    samples = samples.float()
    prob = ((samples.mean(dim=0) + 1) / 2).clamp(0, 1)
    fg = ((samples + 1) / 2).clamp(0, 1)
    std = fg.std(dim=0, unbiased=False)
    maps = torch.stack((prob, std))[None]                          # (1, 2, S, S)
    up = F.interpolate(maps, size=size_hw, mode="bilinear", align_corners=False)[0]
    probability = up[0].clamp(0, 1).numpy().astype(np.float32)
    mask = probability > 0.5
    need_samples = return_samples or fusion == "staple" or refine == "crf"
    fg_up = (F.interpolate(fg[None], size=size_hw, mode="bilinear", align_corners=False)[0]
             .numpy() if need_samples else None)                   # (E, H, W) in [0, 1]
    binary = fg_up > 0.5 if need_samples else None
    if fusion == "staple":
        mask = staple_fusion(binary)
    if refine == "crf":
        from .crf import diffseg_refine
        from .visualise import to_uint8_rgb
        refined = diffseg_refine(to_uint8_rgb(image.numpy()), fg_up,
                                 rng or np.random.default_rng(0))
        mask = refined > 0.5
    res = SegmentationResult(mask=mask, probability=probability,
                             std=up[1].clamp_min(0).numpy().astype(np.float32),
                             entropy=entropy_map(probability).astype(np.float32),
                             fusion=fusion + ("+crf" if refine == "crf" else ""))
    if return_samples:
        res.samples = binary
    return res


def segment(images, steps: int = 25, ensemble: int = 5, model=None, seed: int = 0,
            sampler: str = "ddim", eta: float = 0.0, batch_size: int = 4,
            fusion: str = "mean", refine: str | None = None, backend: str = "auto",
            return_samples: bool = False, progress: bool = False,
            noise_keys: list | None = None, clip_x0: bool = True) -> list[SegmentationResult]:
    """Segment skin lesions.

    images: a path, PIL image, numpy array (H x W, H x W x 3|4; uint8, uint16 or float in
        [0, 1]), tensor (3 x H x W or B x 3 x H x W), or a list of these.
    steps: DDIM steps (1..T); ensemble: chains per image, averaged; model: None (bundled
        default), a checkpoint path, or a loaded model; seed: same seed, same masks;
    sampler: "ddim" (default) or "ddpm" (the published 250-step sampler; ignores steps);
    batch_size: images per network batch (each brings `ensemble` chains);
    fusion: "mean" (published: ensemble mean > 0) or "staple" (EM over the binary samples);
    refine: None or "crf" (DenseCRF, DiffSeg's protocol; needs the [crf] extra);
    backend: "auto" (fast when the C++ ops are built), "fast", or "reference";
    return_samples: also return the N binary samples at the original size;
    noise_keys: one int or string per image that, with `seed`, fixes its initial noise
        (default: its position in `images`). Give stable names (e.g. file names) to get the
        same mask for an image whatever else is in the call.
    clip_x0: DDIM only: clamp each step's estimate of the clean mask to [-1, 1] (default;
        measured +0.10 per-image Dice on PH2 val for the default model, MODEL_CARD.md);
        False gives the unclipped textbook DDIM.
    Returns one SegmentationResult per image, in order.
    """
    items = as_image_list(images)
    if noise_keys is not None and len(noise_keys) != len(items):
        raise ValueError(f"noise_keys has {len(noise_keys)} entries for {len(items)} images")
    model = resolve_model(model)
    _check_args(model, steps, ensemble, sampler, fusion, refine)
    eps_model = select_eps_model(model, backend)
    chws = [to_chw(item, i) for i, item in enumerate(items)]   # validates every image first
    size = model.preprocessing.image_size
    device = next(model.parameters()).device
    results: list[SegmentationResult] = []
    bar = _progress_bar(len(chws), progress)
    for start in range(0, len(chws), batch_size):
        chunk = chws[start:start + batch_size]
        inp = to_model_input(chunk, size).to(device)
        samples = sample_ensemble(model, inp, steps, ensemble, seed, sampler, eta,
                                  first_index=start, eps_model=eps_model,
                                  noise_keys=None if noise_keys is None
                                  else noise_keys[start:start + len(chunk)],
                                  clip_x0=clip_x0).cpu()
        for k, chw in enumerate(chunk):
            key = start + k if noise_keys is None else noise_keys[start + k]
            rng = np.random.default_rng(noise_seed(seed, key))   # CRF's sample draws
            results.append(samples_to_result(samples[k], tuple(chw.shape[1:]), return_samples,
                                             fusion, refine, chw, rng))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return results


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", desc="segment")


__all__ = ["segment", "SegmentationResult", "ImageInputError", "default_model"]
