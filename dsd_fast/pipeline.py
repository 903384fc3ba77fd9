"""Pipeline: the segmenter of every mask-diffusion family (DermoSegDiff, MedSegDiff, official
MedSegDiff). Built by the family (`ModelFamily.segmenter`), usually through `dsd_fast.load`.

    pipe = dsd_fast.load()                      # bundled default; or load("model.pth")
    results = pipe.segment(["a.jpg", "b.png"])  # the model's own sampler; or steps=, ...

A Pipeline holds the reference network, its family, its diffusion schedule and its
preprocessing as real fields. Per call (segmenter.py holds the loop):
    images -> (C, H, W) in [0, 1] (images.py) -> the network's view (preprocess.py)
    each image repeated `ensemble` times -> ONE batched sampler run (diffusion/ensemble.py)
    samples -> probability, std, mask at the original size (results.py)
A model of K > 1 mask channels has K classes (classes.py): `classes` names them (the file's
metadata), its masks are label maps and its maps (K, H, W).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch import nn

from .allocator import tune_malloc
from .diffusion import SPACINGS, Schedule, as_eps_model, sample_ensemble
from .errors import CheckpointError
from .options import (BACKENDS, CROPS, ZOOM_BOXES, ZOOM_OUTSIDE, ZOOM_PASSES, Choices,
                      SegmentOptions)
from .postprocess import METHODS as POSTPROCESS_METHODS
from .precision import resolve_precision, with_precision
from .preprocess import Preprocessing, to_model_input
from .classes import check_classes, class_metadata, classes_from_metadata
from .segmenter import Segmenter


@dataclass(eq=False, repr=False)
class Pipeline(Segmenter):
    """Network + family + schedule + preprocessing: everything `segment` needs."""
    model: nn.Module
    family: object
    schedule: Schedule
    preprocessing: Preprocessing
    # The sampler setting the weights were measured best with at segment()'s cost, from the
    # file's metadata ("sampler_defaults": steps, ensemble, spacing); None: CLASSIC_SAMPLING.
    sampler_defaults: dict | None = None
    # The mask clean-up segment(postprocess="auto") runs (postprocess.py), from the file's
    # metadata ("postprocess"); None: the published mask, untouched.
    postprocess_default: str | None = None
    # The class names and nesting of a model of several mask channels (classes.py), from
    # the file's metadata "classes" / "classes_nested"; None: the defaults (`classes`).
    class_names: tuple[str, ...] | None = None
    nested_classes: bool | None = None
    # The crop segment() runs without crop= (options.CROPS; "zoom": zoom.py's passes),
    # from the file's metadata ("crop"); None: "full", the whole image.
    crop_default: str | None = None
    # What crop="zoom" leaves outside its finest box without zoom_outside= (options.
    # ZOOM_OUTSIDE; "background": a task of one object per image), from the file's
    # metadata ("zoom_outside"); None: "pass1", the first pass's maps.
    zoom_outside_default: str | None = None
    # How many passes crop="zoom" runs without zoom_passes= (options.ZOOM_PASSES), from the
    # file's metadata ("zoom_passes"); None: 2.
    zoom_passes_default: int | None = None
    # How many candidate boxes crop="zoom"'s pass 2 tries without zoom_boxes= (options.
    # ZOOM_BOXES), from the file's metadata ("zoom_boxes"); None: 1.
    zoom_boxes_default: int | None = None

    def __post_init__(self):
        if self.class_names is not None:
            self.class_names = check_classes(self.class_names, self.mask_channels)
        own = self.family.choices(self.config).crops
        if self.crop_default is not None and self.crop_default not in own:
            raise ValueError(f"crop_default={self.crop_default!r} is not a crop this model "
                             f"accepts ({', '.join(map(repr, own))})")
        if self.zoom_outside_default not in (None, *ZOOM_OUTSIDE):
            raise ValueError(f"zoom_outside_default must be None or one of {ZOOM_OUTSIDE}, "
                             f"got {self.zoom_outside_default!r}")
        if self.zoom_passes_default not in (None, *ZOOM_PASSES):
            raise ValueError(f"zoom_passes_default must be None or one of {ZOOM_PASSES}, "
                             f"got {self.zoom_passes_default!r}")
        if self.zoom_boxes_default not in (None, *ZOOM_BOXES):
            raise ValueError(f"zoom_boxes_default must be None or one of {ZOOM_BOXES}, "
                             f"got {self.zoom_boxes_default!r}")

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
                            conv.self_condition)

    def sample(self, model_input: torch.Tensor, steps: int, ensemble: int, seed: int,
               noise_keys: list, sampler: str = "ddim", eta: float = 0.0,
               clip_x0: bool = True, backend: str = "auto", eps_model=None,
               spacing: str = "leading", tta: bool = False) -> torch.Tensor:
        """(N, C, S, S) network inputs -> (N, ensemble, S, S) samples in [-1, 1] ((N,
        ensemble, K, S, S) for K > 1 classes), with the family's sampling conventions (its
        DDPM, its DDIM grid and clipping)."""
        conv = self.family.sampling_conventions(self.config)
        x = sample_ensemble(eps_model or self.eps_model(backend), self.schedule, model_input,
                            steps, ensemble, seed, noise_keys=noise_keys, sampler=sampler,
                            eta=eta, clip_x0=clip_x0, ddpm=conv.ddpm, keep_eps=conv.keep_eps,
                            ddim_timesteps=conv.ddim_timesteps,
                            spacing=spacing, tta=tta, mask_channels=self.mask_channels)
        return self.family.signed_samples(x, self.config)

    def model_input(self, chws: list[torch.Tensor]) -> torch.Tensor:
        """(C, H, W) images in [0, 1] -> (N, C, S, S) network input on the model's device."""
        return to_model_input(chws, self.preprocessing).to(self.device)

    # ------------------------------------------------------------------ the segmenter steps
    def choices(self) -> Choices:
        own_grid = self.family.sampling_conventions(self.config).ddim_timesteps
        base = self.family.choices(self.config)
        first = self.crop_default or base.crops[0]      # the first crop is the default
        return dataclasses.replace(
            base, T=self.schedule.T, crops=(first, *(c for c in base.crops if c != first)),
            sampler_defaults=self.sampler_defaults, postprocess=self.postprocess_default,
            zoom_outside=self.zoom_outside_default, zoom_passes=self.zoom_passes_default,
            zoom_boxes=self.zoom_boxes_default,
            # a family whose DDIM walks its original code's own grid has only that one
            spacings=("leading",) if own_grid is not None else SPACINGS)

    def view(self, chw: torch.Tensor, opts: SegmentOptions | None = None) -> torch.Tensor:
        return to_model_input([chw], self.preprocessing)[0]

    def draw(self, views: torch.Tensor, keys: list, opts: SegmentOptions) -> torch.Tensor:
        return self.sample(views, opts.steps, opts.ensemble, opts.seed, keys, opts.sampler,
                           opts.eta, opts.clip_x0, spacing=opts.spacing, tta=opts.tta,
                           eps_model=self.eps_model(opts.backend, opts.precision))

    def sampler_settings(self, steps=None, ensemble=None, spacing=None, sampler="ddim"):
        """(steps, ensemble, spacing) a segment() call with these runs (options.resolve)."""
        o = self.resolve(steps=steps, ensemble=ensemble, spacing=spacing, sampler=sampler)
        return o.steps, o.ensemble, o.spacing

    # ------------------------------------------------------------------ files
    def file_contents(self) -> tuple[dict, dict]:
        """(tensors, metadata) of this pipeline as an own-format file (checkpoint.save_model)."""
        config = self.config
        meta = {"family": self.family.name, "config": config.to_json(),
                "schedule": json.dumps(self.schedule.to_dict()),
                "preprocessing": json.dumps(self.preprocessing.to_dict())}
        if self.sampler_defaults:
            meta["sampler_defaults"] = json.dumps(self.sampler_defaults)
        if self.postprocess_default:
            meta["postprocess"] = self.postprocess_default
        if self.crop_default:
            meta["crop"] = self.crop_default
        if self.zoom_outside_default:
            meta["zoom_outside"] = self.zoom_outside_default
        if self.zoom_passes_default:
            meta["zoom_passes"] = str(self.zoom_passes_default)
        if self.zoom_boxes_default and self.zoom_boxes_default > 1:
            meta["zoom_boxes"] = str(self.zoom_boxes_default)
        if self.class_names is not None or self.mask_channels > 1:
            meta.update(class_metadata(self.classes, self.nested))
        return dict(self.model.state_dict()), meta

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"Pipeline(family={self.family.name!r}, {n / 1e6:.2f} M parameters, "
                f"T={self.schedule.T}, {self.preprocessing}, device={self.device})")


def sampler_defaults_from(meta: dict) -> dict | None:
    """A file's "sampler_defaults" metadata (JSON: steps, ensemble, spacing), checked."""
    raw = meta.get("sampler_defaults")
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        out = {"steps": int(d["steps"]), "ensemble": int(d["ensemble"]),
               "spacing": str(d["spacing"])}
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"the file's sampler_defaults metadata is not valid: {e}") from None
    if out["steps"] < 1 or out["ensemble"] < 1 or out["spacing"] not in SPACINGS:
        raise CheckpointError(f"the file's sampler_defaults metadata is not valid: {raw}")
    return out


def postprocess_from(meta: dict) -> str | None:
    """A file's "postprocess" metadata (a postprocess.METHODS name), checked."""
    raw = meta.get("postprocess")
    if raw is not None and raw not in POSTPROCESS_METHODS:
        raise CheckpointError(f"the file's postprocess metadata {raw!r} is not one of "
                            f"{POSTPROCESS_METHODS}")
    return raw


def crop_from(meta: dict, accepted: tuple[str, ...] = CROPS) -> str | None:
    """A file's "crop" metadata (e.g. "zoom": segment() runs the coarse-to-fine zoom unless
    a call says crop="full"), checked against the crops its model `accepted`."""
    raw = meta.get("crop")
    if raw is not None and raw not in accepted:
        raise CheckpointError(f"the file's crop metadata {raw!r} is not a crop this model "
                              f"accepts ({', '.join(map(repr, accepted))})")
    return raw


def zoom_outside_from(meta: dict) -> str | None:
    """A file's "zoom_outside" metadata (options.ZOOM_OUTSIDE: what crop="zoom" leaves
    outside its finest box by default; "background" for a task of one object per image),
    checked."""
    raw = meta.get("zoom_outside")
    if raw is not None and raw not in ZOOM_OUTSIDE:
        raise CheckpointError(f"the file's zoom_outside metadata {raw!r} is not one of "
                              f"{', '.join(map(repr, ZOOM_OUTSIDE))}")
    return raw


def _count_from(meta: dict, name: str, allowed: tuple[int, ...]) -> int | None:
    """A file's integer zoom metadata `name` (stored as text), checked against `allowed`."""
    raw = meta.get(name)
    if raw is None:
        return None
    if str(raw).strip() not in tuple(map(str, allowed)):
        raise CheckpointError(f"the file's {name} metadata {raw!r} is not one of "
                              f"{', '.join(map(str, allowed))}")
    return int(raw)


def zoom_passes_from(meta: dict) -> int | None:
    """A file's "zoom_passes" metadata (options.ZOOM_PASSES, as text: how many passes
    crop="zoom" runs by default), checked."""
    return _count_from(meta, "zoom_passes", ZOOM_PASSES)


def zoom_boxes_from(meta: dict) -> int | None:
    """A file's "zoom_boxes" metadata (options.ZOOM_BOXES, as text: how many candidate
    boxes crop="zoom"'s pass 2 tries by default), checked."""
    return _count_from(meta, "zoom_boxes", ZOOM_BOXES)


def zoom_defaults_from(meta: dict, accepted: tuple[str, ...] = CROPS) -> dict:
    """A file's crop="zoom" defaults, checked: {"crop": crop_from, "zoom_outside":
    zoom_outside_from, "zoom_passes": zoom_passes_from, "zoom_boxes": zoom_boxes_from}
    (each None where the file has none)."""
    return {"crop": crop_from(meta, accepted), "zoom_outside": zoom_outside_from(meta),
            "zoom_passes": zoom_passes_from(meta), "zoom_boxes": zoom_boxes_from(meta)}


def classes_from(meta: dict, mask_channels: int) -> tuple[tuple[str, ...] | None, bool | None]:
    """A file's "classes" / "classes_nested" metadata (classes.py), checked against the
    model's mask channel count."""
    try:
        return classes_from_metadata(meta, mask_channels)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
