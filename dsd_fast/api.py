"""The public entry points: `load` -> a segmenter, and `segment()`.

    pipe = dsd_fast.load()                  # bundled default; or load("model.safetensors")
    results = pipe.segment(["a.jpg", "b.png"])   # the model's sampler; or steps=, ensemble=
    results = dsd_fast.segment(["a.jpg"])   # the one-call form over the same segmenter

What a segmenter is and its one batched loop: segmenter.py; the mask-diffusion one:
pipeline.py; the options every call takes: options.py (SegmentOptions).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from torch import nn

from .checkpoint import load_segmenter
from .diffusion import Schedule
from .families import family_of_network
from .images import as_image_list
from .options import BACKENDS, CLASSIC_SAMPLING, SegmentOptions
from .pipeline import Pipeline
from .preprocess import Preprocessing
from .results import SegmentationResult
from .segmenter import Segmenter

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL_PATH = WEIGHTS_DIR / "default.safetensors"
# Bundled models by name (MODEL_CARD.md): load("medsegdiff"), segment(model="...").
# "dermosegdiff-ph2" and "medsegdiff-ph2" are the names of their first, PH2-only weights,
# kept so code that used them still runs; both models are now trained on PH2 + HAM10000.
BUNDLED = {"default": "default.safetensors", "dermosegdiff-ph2": "default.safetensors",
           "medsegdiff": "medsegdiff.safetensors", "medsegdiff-ph2": "medsegdiff.safetensors",
           "thyroid-ultrasound": "thyroid-ultrasound.safetensors",
           "fundus-disc-cup": "fundus-disc-cup.safetensors",
           "breast-ultrasound": "breast-ultrasound.safetensors",
           "polyp": "polyp.safetensors"}


def model_path(path):
    """None -> the bundled default's file; a bundled model's name (not an existing file) ->
    its file; anything else as given."""
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


def load(path=None, device="cpu", family=None, config=None, **settings) -> Segmenter:
    """A model file (own .safetensors or the original code's .pt/.pth), a bundled model's
    name (BUNDLED), or None for the bundled default -> its segmenter (a Pipeline for
    mask-diffusion families, a DiffSegPipeline for a DiffSeg pair). `family`, `config` and
    `settings` are for files that do not say what they are (see checkpoint.load_parts)."""
    return load_segmenter(model_path(path), device, family, config, **settings)


def pipeline_from_network(net: nn.Module, schedule: Schedule | None = None,
                          preprocessing: Preprocessing | None = None) -> Segmenter:
    """A network built or loaded in memory -> its family's segmenter, with the family's
    default schedule and preprocessing unless given."""
    fam = family_of_network(net)
    config = fam.config_of(net)
    return fam.segmenter(net, schedule or fam.default_schedule(config),
                         preprocessing or fam.preprocessing(config))


def _default_path() -> Path:
    if not DEFAULT_MODEL_PATH.exists():
        raise FileNotFoundError(
            f"no bundled default model at {DEFAULT_MODEL_PATH}. Pass a checkpoint instead: "
            "segment(images, model='path/to/model.safetensors' or a published .pt/.pth file), "
            "or on the command line --checkpoint PATH.")
    return DEFAULT_MODEL_PATH


@functools.lru_cache(maxsize=4)
def _shared(path: Path) -> Segmenter:
    # segment(model=None or a bundled name) calls reuse one loaded segmenter (and so its
    # cached fast model).
    return load_segmenter(path)


def default_model() -> nn.Module:
    """The bundled default network (see MODEL_CARD.md)."""
    return load().model


def as_pipeline(model) -> Segmenter:
    """None (bundled default), a bundled name, a checkpoint path, a network, or a segmenter
    -> a segmenter."""
    if isinstance(model, Segmenter):
        return model
    if model is None or (isinstance(model, str) and model in BUNDLED
                         and not Path(model).exists()):
        return _shared(model_path(model))
    if isinstance(model, (str, os.PathLike)):
        return load(model)
    if isinstance(model, nn.Module):
        return pipeline_from_network(model)
    raise TypeError(f"model must be None, a checkpoint path, a network or a segmenter, "
                    f"got {type(model).__name__}")


def segment(images, model=None, options: SegmentOptions | None = None, *,
            noise_keys: list | None = None, progress: bool = False,
            **changes) -> list[SegmentationResult]:
    """Segment `images` with `model` (None: the bundled default; a bundled model's name
    such as "medsegdiff"; a checkpoint path; a network; or a segmenter from `load`).

    images: a path, PIL image, numpy array (H x W, H x W x 3|4; uint8, uint16 or float in
        [0, 1]), tensor (3 x H x W or B x 3 x H x W), or a list of these.
    options / keyword changes: SegmentOptions fields (options.py): steps, ensemble,
        spacing, seed, sampler, eta, clip_x0, batch_size, fusion, refine, crop,
        zoom_outside, zoom_passes, zoom_boxes, backend, precision, tta, postprocess,
        return_samples.
        Not given: the model's own settings (the bundled default: 25 members x 5
        trailing DDIM steps, largest component).
    noise_keys: one int or string per image that, with `seed`, fixes its initial noise.
        Default: a digest of the image's pixels, so an image gets the same mask whatever
        else is in the call and wherever it stands in the list.
    Returns one SegmentationResult per image, in order: mask (H, W) bool at the original
    size, probability and std (H, W) float32, entropy, and the samples when asked.
    """
    items = as_image_list(images)            # image errors before a model is loaded
    opts = SegmentOptions.of(options, **changes)
    return as_pipeline(model).segment(items, opts, noise_keys=noise_keys, progress=progress)


__all__ = ["Pipeline", "Segmenter", "SegmentOptions", "load", "segment", "SegmentationResult",
           "default_model", "as_pipeline", "pipeline_from_network", "model_path",
           "DEFAULT_MODEL_PATH", "BACKENDS", "BUNDLED", "CLASSIC_SAMPLING"]
