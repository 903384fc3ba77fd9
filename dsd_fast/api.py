"""The public entry points: `load` -> Pipeline, `Pipeline.segment`, and `segment()`.

    pipe = dsd_fast.load()                  # bundled default; or load("model.safetensors")
    results = pipe.segment(["a.jpg", "b.png"])   # the model's sampler; or steps=, ensemble=
    results = dsd_fast.segment(["a.jpg"])   # the one-call form over the same Pipeline

A Pipeline holds the reference network, its family, its diffusion schedule and its
preprocessing as real fields. Per call:
    images -> (3, H, W) in [0, 1] (images.py) -> network input (preprocess.py)
    each image repeated `ensemble` times -> ONE batched sampler run (diffusion/ensemble.py)
    samples -> probability, std, mask at the original size (results.py)
"""
from __future__ import annotations

import functools
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .allocator import tune_malloc
from .diffusion import SAMPLERS, SPACINGS, Schedule, as_eps_model, noise_seed, sample_ensemble
from .diffusion.ensemble import MAX_SEED, ddim_grid
from .families import ModelFamily, family_of_network
from .images import as_image_list, to_chw
from .postprocess import METHODS as POSTPROCESS_METHODS
from .postprocess import postprocessed, resolve_postprocess
from .precision import resolve_precision, with_precision
from .preprocess import Preprocessing, content_key, to_model_input
from .results import SegmentationResult, check_fusion, samples_to_result

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL_PATH = WEIGHTS_DIR / "default.safetensors"
# Bundled models by name (MODEL_CARD.md): load("medsegdiff"), segment(model="...").
# "dermosegdiff-ph2" and "medsegdiff-ph2" are the names of their first, PH2-only weights,
# kept so code that used them still runs; both models are now trained on PH2 + HAM10000.
BUNDLED = {"default": "default.safetensors", "dermosegdiff-ph2": "default.safetensors",
           "medsegdiff": "medsegdiff.safetensors", "medsegdiff-ph2": "medsegdiff.safetensors"}
BACKENDS = ("auto", "fast", "reference")
# segment()'s sampler where a model states none of its own (and for the values a call does
# not give when it gives some): the published DermoSegDiff evaluation's DDIM 25 x 5.
CLASSIC_SAMPLING = {"steps": 25, "ensemble": 5, "spacing": "leading"}


def resolve_sampling(model_defaults: dict | None, steps=None, ensemble=None, spacing=None,
                     sampler: str = "ddim") -> tuple:
    """(steps, ensemble, spacing) for a call that gave these (None: not given). Given none
    of the three, a DDIM call takes the model's own defaults (the bundled default: 25
    members x 5 trailing steps, the cost of 5 x 25 and better Dice, MODEL_CARD.md);
    otherwise, or for a model without them, each one not given is CLASSIC_SAMPLING's, so
    steps=25 means exactly 25 steps of 5 members, as it always has."""
    if steps is None and ensemble is None and spacing is None and sampler == "ddim" \
            and model_defaults:
        return model_defaults["steps"], model_defaults["ensemble"], model_defaults["spacing"]
    c = CLASSIC_SAMPLING
    return (c["steps"] if steps is None else steps,
            c["ensemble"] if ensemble is None else ensemble,
            c["spacing"] if spacing is None else spacing)


def sampler_defaults_from(meta: dict) -> dict | None:
    """A file's "sampler_defaults" metadata (JSON: steps, ensemble, spacing), checked."""
    import json
    raw = meta.get("sampler_defaults")
    if raw is None:
        return None
    from .checkpoint import CheckpointError
    try:
        d = json.loads(raw)
        out = {"steps": int(d["steps"]), "ensemble": int(d["ensemble"]),
               "spacing": str(d["spacing"])}
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"the file's sampler_defaults metadata is not valid: {e}") from None
    if out["steps"] < 1 or out["ensemble"] < 1 or out["spacing"] not in SPACINGS:
        raise CheckpointError(f"the file's sampler_defaults metadata is not valid: {raw}")
    return out


@dataclass(eq=False, repr=False)
class Pipeline:
    """Network + family + schedule + preprocessing: everything `segment` needs."""
    model: nn.Module
    family: ModelFamily
    schedule: Schedule
    preprocessing: Preprocessing
    # The sampler setting the weights were measured best with at segment()'s cost, from the
    # file's metadata ("sampler_defaults": steps, ensemble, spacing); None: CLASSIC_SAMPLING.
    sampler_defaults: dict | None = None
    # The mask clean-up segment(postprocess="auto") runs (postprocess.py), from the file's
    # metadata ("postprocess"); None: the published mask, untouched.
    postprocess_default: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path=None, device="cpu", family=None, config=None,
                        **settings) -> "Pipeline":
        """A model file (own .safetensors or the original code's .pt/.pth), a bundled model's
        name (BUNDLED), or None for the bundled default. `family`, `config` and `settings`
        are for files that do not say what they are (see checkpoint.load_parts)."""
        from .checkpoint import load_diffseg_pair, load_parts, read_metadata
        path = _model_path(path)
        if isinstance(path, (str, os.PathLike)) and \
                read_metadata(path).get("family") == "diffseg":
            return load_diffseg_pair(path, device)            # a DiffSegPipeline
        fam, net, schedule, pre = load_parts(path, config, family, device, **settings)
        _need_mask_diffusion(fam)
        meta = read_metadata(path) if isinstance(path, (str, os.PathLike)) else {}
        return cls(net, fam, schedule, pre, sampler_defaults_from(meta),
                   postprocess_from(meta))

    @classmethod
    def from_model(cls, net: nn.Module, schedule: Schedule | None = None,
                   preprocessing: Preprocessing | None = None) -> "Pipeline":
        """A network built or loaded in memory, with its family's default schedule and
        preprocessing unless given."""
        fam = family_of_network(net)
        _need_mask_diffusion(fam)
        config = fam.config_of(net)
        return cls(net, fam, schedule or fam.default_schedule(config),
                   preprocessing or fam.preprocessing(config))

    @property
    def config(self):
        return self.family.config_of(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "Pipeline":
        self.model.to(device)
        return self

    # ------------------------------------------------------------------ the network
    def denoiser(self, backend: str = "auto") -> nn.Module:
        """The network the sampler calls: the fast model (folded weights, fused ops) or the
        reference itself. "auto" takes the fast path when the C++ ops are built (on CPU) or
        the Triton kernels are registered (on CUDA)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if self.device.type == "cpu":
            tune_malloc()                     # keep activations' pages mapped (allocator.py)
        if backend == "reference":
            return self.model
        if backend == "auto":
            from . import ops
            if not ops.fast_path_available(self.device):
                return self.model
        return self.family.fast_model_for(self.model)

    def eps_model(self, backend: str = "auto", precision: str = "fp32"):
        """denoiser(backend) at `precision` (precision.py) as a noise predictor (x0 / v
        outputs converted, self-conditioning fed back)."""
        conv = self.family.sampling_conventions(self.config)
        net = with_precision(self.family.eps_network(self.denoiser(backend)),
                             resolve_precision(precision, self.device))
        return as_eps_model(net, self.family.prediction(self.config), self.schedule,
                            conv["self_condition"])

    def sample(self, model_input: torch.Tensor, steps: int, ensemble: int, seed: int,
               noise_keys: list, sampler: str = "ddim", eta: float = 0.0,
               clip_x0: bool = True, backend: str = "auto", eps_model=None,
               spacing: str = "leading", tta: bool = False) -> torch.Tensor:
        """(N, C, S, S) network inputs -> (N, ensemble, S, S) samples in [-1, 1], with the
        family's sampling conventions (its DDPM, its DDIM grid and clipping)."""
        conv = self.family.sampling_conventions(self.config)
        x = sample_ensemble(eps_model or self.eps_model(backend), self.schedule, model_input,
                            steps, ensemble, seed, noise_keys=noise_keys, sampler=sampler,
                            eta=eta, clip_x0=clip_x0, ddpm=conv["ddpm"],
                            keep_eps=conv["keep_eps"], ddim_timesteps=conv["ddim_timesteps"],
                            spacing=spacing, tta=tta)
        return self.family.signed_samples(x, self.config)

    def model_input(self, chws: list[torch.Tensor]) -> torch.Tensor:
        """(3, H, W) images in [0, 1] -> (N, 3, S, S) network input on the model's device."""
        return to_model_input(chws, self.preprocessing).to(self.device)

    # ------------------------------------------------------------------ segmentation
    def sampler_settings(self, steps=None, ensemble=None, spacing=None, sampler="ddim"):
        """(steps, ensemble, spacing) a segment() call runs with (resolve_sampling)."""
        return resolve_sampling(self.sampler_defaults, steps, ensemble, spacing, sampler)

    def check_args(self, steps, ensemble, sampler="ddim", fusion="mean", refine=None,
                   batch_size=1, seed=0, eta=0.0, spacing="leading", tta=False) -> None:
        check_fusion(fusion, refine)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        ddim_grid(spacing, sampler,
                  self.family.sampling_conventions(self.config)["ddim_timesteps"])
        if not isinstance(tta, bool):
            raise ValueError(f"tta must be True or False, got {tta!r}")
        T = self.schedule.T
        if not _is_int(steps) or not 1 <= steps <= T:
            raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
        for name, v in (("ensemble", ensemble), ("batch_size", batch_size)):
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
        if not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")

    def segment(self, images, steps: int | None = None, ensemble: int | None = None,
                seed: int = 0, sampler: str = "ddim", eta: float = 0.0, batch_size: int = 4,
                fusion: str = "mean", refine: str | None = None, backend: str = "auto",
                return_samples: bool = False, progress: bool = False,
                noise_keys: list | None = None, clip_x0: bool = True,
                precision: str = "fp32", spacing: str | None = None,
                tta: bool = False, postprocess: str | None = "auto") -> list[SegmentationResult]:
        """Segment skin lesions; see `dsd_fast.segment` for the arguments."""
        items = as_image_list(images)
        postprocess = resolve_postprocess(postprocess, self.postprocess_default)
        if noise_keys is not None and len(noise_keys) != len(items):
            raise ValueError(f"noise_keys has {len(noise_keys)} entries for {len(items)} images")
        steps, ensemble, spacing = self.sampler_settings(steps, ensemble, spacing, sampler)
        self.check_args(steps, ensemble, sampler, fusion, refine, batch_size, seed, eta,
                        spacing, tta)
        steps, ensemble, batch_size, seed = int(steps), int(ensemble), int(batch_size), int(seed)
        eps_model = self.eps_model(backend, precision)
        chws = [to_chw(item, i) for i, item in enumerate(items)]   # validates every image first
        keys = list(noise_keys) if noise_keys is not None else [content_key(c) for c in chws]
        results: list[SegmentationResult] = []
        bar = _progress_bar(len(chws), progress)
        for start in range(0, len(chws), batch_size):
            chunk, chunk_keys = chws[start:start + batch_size], keys[start:start + batch_size]
            samples = self.sample(self.model_input(chunk), steps, ensemble, seed, chunk_keys,
                                  sampler, eta, clip_x0, eps_model=eps_model,
                                  spacing=spacing, tta=tta).cpu()
            for k, chw in enumerate(chunk):
                rng = np.random.default_rng(noise_seed(seed, chunk_keys[k]))  # CRF's draws
                results.append(postprocessed(
                    samples_to_result(samples[k], tuple(chw.shape[1:]), return_samples,
                                      fusion, refine, chw, rng), postprocess))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return results

    __call__ = segment

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"Pipeline(family={self.family.name!r}, {n / 1e6:.2f} M parameters, "
                f"T={self.schedule.T}, {self.preprocessing}, device={self.device})")


def _need_mask_diffusion(fam) -> None:
    if not fam.mask_diffusion:
        from .checkpoint import CheckpointError
        raise CheckpointError(
            f"a {fam.title} network is one of a pair and segments nothing alone: use "
            "dsd_fast.families.diffseg.DiffSegPipeline.from_files(have_path, no_path), or "
            "load a pair saved with dsd_fast.save_model(pipeline, 'pair.safetensors')")


def _default_path() -> Path:
    if not DEFAULT_MODEL_PATH.exists():
        raise FileNotFoundError(
            f"no bundled default model at {DEFAULT_MODEL_PATH}. Pass a checkpoint instead: "
            "segment(images, model='path/to/model.safetensors' or a published .pt/.pth file), "
            "or on the command line --checkpoint PATH.")
    return DEFAULT_MODEL_PATH


def _model_path(path):
    """None -> the bundled default; a bundled model's name (not an existing file) -> its
    file; anything else as given."""
    if path is None:
        return _default_path()
    if isinstance(path, str) and path in BUNDLED and not Path(path).exists():
        if BUNDLED[path] == DEFAULT_MODEL_PATH.name:
            return _default_path()
        bundled = WEIGHTS_DIR / BUNDLED[path]
        if not bundled.exists():
            raise FileNotFoundError(f"the bundled model {path!r} is not in this install "
                                    f"({bundled} is missing)")
        return bundled
    return path


@functools.lru_cache(maxsize=4)
def _shared_default(path: Path) -> Pipeline:
    # segment(model=None or a bundled name) calls reuse one loaded pipeline (and so its
    # cached fast model).
    return Pipeline.from_pretrained(path)


def load(path=None, device="cpu", **kwargs) -> Pipeline:
    """`Pipeline.from_pretrained`: a model file, or None for the bundled default."""
    return Pipeline.from_pretrained(path, device, **kwargs)


def default_model() -> nn.Module:
    """The bundled default network (see MODEL_CARD.md)."""
    return Pipeline.from_pretrained(None).model


def as_pipeline(model) -> Pipeline:
    """None (bundled default), a checkpoint path, a network, or a Pipeline -> Pipeline."""
    if model is None:
        return _shared_default(_default_path())
    if isinstance(model, Pipeline) or hasattr(model, "segment"):
        return model            # a Pipeline, or another family's pipeline (DiffSeg)
    if isinstance(model, str) and model in BUNDLED and not Path(model).exists():
        return _shared_default(_model_path(model))
    if isinstance(model, (str, os.PathLike)):
        return Pipeline.from_pretrained(model)
    if isinstance(model, nn.Module):
        return Pipeline.from_model(model)
    raise TypeError(f"model must be None, a checkpoint path, a network or a Pipeline, "
                    f"got {type(model).__name__}")


def segment(images, steps: int | None = None, ensemble: int | None = None, model=None,
            seed: int = 0, sampler: str = "ddim", eta: float = 0.0, batch_size: int = 4,
            fusion: str = "mean", refine: str | None = None, backend: str = "auto",
            return_samples: bool = False, progress: bool = False,
            noise_keys: list | None = None, clip_x0: bool = True,
            precision: str = "fp32", spacing: str | None = None,
            tta: bool = False, postprocess: str | None = "auto") -> list[SegmentationResult]:
    """Segment skin lesions.

    images: a path, PIL image, numpy array (H x W, H x W x 3|4; uint8, uint16 or float in
        [0, 1]), tensor (3 x H x W or B x 3 x H x W), or a list of these.
    steps: DDIM steps (1..T); ensemble: chains per image, averaged; spacing: below. Given
        none of the three, the model's own setting (`Pipeline.sampler_settings`: the bundled
        default runs 25 members x 5 trailing steps); else 25 steps, 5 members, "leading"
        for those not given. model: None (bundled
        default), a bundled model's name ("medsegdiff"), a checkpoint path, a network,
        or a Pipeline (`dsd_fast.load`);
    seed: same seed and image, same mask;
    sampler: "ddim" (default) or "ddpm" (the published T-step sampler; ignores steps);
    batch_size: images per network batch (each brings `ensemble` chains);
    fusion: "mean" (published: ensemble mean > 0) or "staple" (EM over the binary samples);
    refine: None or "crf" (DenseCRF, DiffSeg's protocol; needs the [crf] extra);
    backend: "auto" (fast when the C++ ops are built), "fast", or "reference";
    return_samples: also return the N binary samples at the original size;
    noise_keys: one int or string per image that, with `seed`, fixes its initial noise.
        Default: a digest of the image's pixels, so an image gets the same mask whatever
        else is in the call and wherever it stands in the list.
    clip_x0: DDIM only: clamp each step's estimate of the clean mask to [-1, 1] (default;
        measured +0.10 per-image Dice on PH2 val for the default model, MODEL_CARD.md);
        False gives the unclipped textbook DDIM.
    precision: "fp32" (default) or "bf16": the network in bfloat16 (autocast), the sampler
        in float32; ~2x faster on large networks where the CPU (AVX-512 BF16, AMX) or GPU
        (sm_80+) has native bfloat16, float32 with a warning elsewhere; masks agree with
        float32's to Dice >= 0.99 (precision.py, MODEL_CARD.md).
    spacing: DDIM's time grid: "leading" (evenly spaced, ending at t = 0) or "trailing"
        (starting at t = T-1); which is better depends on the weights and the step count
        (MODEL_CARD.md);
    tta: ensemble member e sees the image flipped/rotated (symmetry e mod 8) and its sample
        is turned back before fusing; same compute as plain members (diffusion/tta.py).
    postprocess: the mask's clean-up (postprocess.py): "auto" (default) the model file's
        own setting (the bundled default: "largest", the largest lesion component only;
        published checkpoints: none), None / "none" the published mask untouched, or
        "fill", "largest", "largest_fill". The probability and uncertainty maps are never
        changed.
    Returns one SegmentationResult per image, in order.
    """
    items = as_image_list(images)            # image errors before a model is loaded
    return as_pipeline(model).segment(
        items, steps=steps, ensemble=ensemble, seed=seed, sampler=sampler, eta=eta,
        batch_size=batch_size, fusion=fusion, refine=refine, backend=backend,
        return_samples=return_samples, progress=progress, noise_keys=noise_keys,
        clip_x0=clip_x0, precision=precision, spacing=spacing, tta=tta,
        postprocess=postprocess)


def postprocess_from(meta: dict) -> str | None:
    """A file's "postprocess" metadata (a postprocess.METHODS name), checked."""
    raw = meta.get("postprocess")
    if raw is not None and raw not in POSTPROCESS_METHODS:
        from .checkpoint import CheckpointError
        raise CheckpointError(f"the file's postprocess metadata {raw!r} is not one of "
                              f"{POSTPROCESS_METHODS}")
    return raw


def _is_int(v) -> bool:
    """An integer of any kind (Python, numpy), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", desc="segment")


__all__ = ["Pipeline", "load", "segment", "SegmentationResult", "default_model",
           "as_pipeline", "DEFAULT_MODEL_PATH", "BACKENDS", "BUNDLED"]
