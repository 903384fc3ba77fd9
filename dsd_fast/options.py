"""segment()'s options: one frozen object, checked once, resolved against a model once.

    opts = SegmentOptions(steps=5, spacing="trailing")       # checked here (values, types)
    run = segmenter.resolve(opts)                              # model defaults filled, checked
                                                               # against what the model accepts
`dsd_fast.segment`, `Segmenter.segment`, `segment_files` and the command line all build one
SegmentOptions; the command line's choices are the tuples below, so a value accepted by
argparse is a value accepted here. What a model accepts beyond these global checks (its
samplers, fusion rules, refinements, crops and T) is its `Choices`, declared by its family.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from .diffusion import SAMPLERS, SPACINGS
from .diffusion.ensemble import MAX_SEED
from .postprocess import METHODS as POSTPROCESS_METHODS
from .precision import PRECISIONS
from .results import FUSIONS

BACKENDS = ("auto", "fast", "reference")
REFINES = ("crf", "crf-published")             # None: no refinement
# "zoom": the coarse-to-fine crop of the mask-diffusion families (zoom.py, segmenter.py)
CROPS = ("full", "center", "zoom")
# What crop="zoom"'s result holds outside its finest box (zoom.py): "pass1", the first pass's
# coarse maps (a second object it found is kept), or "background" (a task with one object
# per image by anatomy: one optic disc per fundus photo)
ZOOM_OUTSIDE = ("pass1", "background")
# How many passes crop="zoom" runs (zoom.py): 2 (pass 2 on the box around pass 1's object,
# the default) or 3 (a third on the box around pass 2's result: better boxes on fundus
# photos, worse Dice on BUSI; docs/usage.md)
ZOOM_PASSES = (2, 3)
# How many boxes around pass 1's candidate objects crop="zoom"'s pass 2 tries (zoom.py,
# `candidate_boxes`): 1 (the box around pass 1's largest object, the default) or up to 4,
# keeping the box where pass 2 is surest of what it draws (fundus photos whose pass 1 drew
# a bright artefact or half the photo as the disc; MODEL_CARD)
ZOOM_BOXES = (1, 2, 3, 4)
POSTPROCESS_CHOICES = ("auto", "none", *POSTPROCESS_METHODS)
# What a call runs where a model states no sampler setting of its own (and for the values a
# call does not give when it gives some): the published DermoSegDiff evaluation's DDIM 25 x 5.
CLASSIC_SAMPLING = {"steps": 25, "ensemble": 5, "spacing": "leading"}


def is_int(v) -> bool:
    """An integer of any kind (Python, numpy), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment. None means "the model's own" (resolved by `Segmenter.resolve`).

    steps, ensemble, spacing: DDIM steps (1..T), chains per image, and DDIM's time grid
        ("leading": evenly spaced ending at t = 0; "trailing": starting at t = T-1). Given
        none of the three, a model's own setting (its file's `sampler_defaults`); else
        CLASSIC_SAMPLING's for those not given, so steps=25 means exactly 25 steps of 5.
    seed: same seed and image, same mask. sampler: "ddim", "ddpm" (the published T-step
        sampler; ignores steps) or "dpmpp" (DPM-Solver++(2M)); None: the family's default.
    eta: DDIM's noise (0: deterministic). clip_x0: clamp DDIM's clean-mask estimate.
    batch_size: images per network batch (each brings `ensemble` chains).
    fusion: "mean" (ensemble mean > 0), "staple" or "mean-squared" (official MedSegDiff).
    refine: None, "crf" (DenseCRF, DiffSeg's protocol) or "crf-published" (DiffSeg only).
    crop: None (the model's own), "full", "center" (DiffSeg's published centre crop) or
        "zoom" (mask-diffusion models: a cheap pass on the whole image finds the object,
        a second pass at this call's setting segments the box around it; zoom.py).
    zoom_passes: with crop="zoom", 2 or 3 (a third pass at this call's setting on the box
        around what the second found); None: the model file's own ("zoom_passes"
        metadata), else 2. 3 with another crop is an error.
    zoom_boxes: with crop="zoom", how many candidate boxes from pass 1 pass 2 tries, 1..4
        (zoom.candidate_boxes); the one whose pass-2 maps are surest (lowest mean entropy
        over what it draws) is kept. None: the model file's own ("zoom_boxes" metadata),
        else 1. More than 1 with another crop is an error.
    zoom_outside: with crop="zoom", what the result holds outside the finest pass's box:
        "pass1" (the first pass's maps) or "background" (mask background, probability,
        std and entropy 0); None: the model file's own ("zoom_outside" metadata), else
        "pass1". "background" with another crop is an error.
    backend: "auto" (fast when its kernels are there), "fast" or "reference".
    precision: "fp32" or "bf16" (autocast network, float32 sampler).
    tta: ensemble member e sees the image under symmetry e mod 8.
    postprocess: "auto" (the model file's own), "none"/None, "fill", "largest",
        "largest_fill". return_samples: also return the N binary samples.
    """
    steps: int | None = None
    ensemble: int | None = None
    spacing: str | None = None
    seed: int = 0
    sampler: str | None = None
    eta: float = 0.0
    clip_x0: bool = True
    batch_size: int = 4
    fusion: str = "mean"
    refine: str | None = None
    crop: str | None = None
    zoom_outside: str | None = None
    zoom_passes: int | None = None
    zoom_boxes: int | None = None
    backend: str = "auto"
    precision: str = "fp32"
    tta: bool = False
    postprocess: str | None = "auto"
    return_samples: bool = False

    def __post_init__(self):
        for name in ("steps", "ensemble"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, numbers.Real) \
                or not math.isfinite(self.eta) or self.eta < 0:
            raise ValueError(f"eta must be a finite number >= 0, got {self.eta!r}")
        for name, allowed in (("spacing", SPACINGS), ("sampler", SAMPLERS),
                              ("refine", REFINES), ("crop", CROPS),
                              ("zoom_outside", ZOOM_OUTSIDE)):
            v = getattr(self, name)
            if v is not None and v not in allowed:
                raise ValueError(f"{name} must be None or one of {allowed}, got {v!r}")
        if self.zoom_passes is not None and (not is_int(self.zoom_passes)
                                             or self.zoom_passes not in ZOOM_PASSES):
            raise ValueError(f"zoom_passes must be None or one of {ZOOM_PASSES}, "
                             f"got {self.zoom_passes!r}")
        if self.zoom_boxes is not None and (not is_int(self.zoom_boxes)
                                            or self.zoom_boxes not in ZOOM_BOXES):
            raise ValueError(f"zoom_boxes must be None or one of {ZOOM_BOXES}, "
                             f"got {self.zoom_boxes!r}")
        for name, allowed in (("fusion", FUSIONS), ("backend", BACKENDS),
                              ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.postprocess is not None and self.postprocess not in POSTPROCESS_CHOICES:
            raise ValueError(f"postprocess must be None or one of {POSTPROCESS_CHOICES}, "
                             f"got {self.postprocess!r}")
        for name in ("clip_x0", "tta", "return_samples"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("steps", "ensemble", "batch_size", "seed", "zoom_passes",   # numpy ints
                     "zoom_boxes"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, int(v))
        object.__setattr__(self, "eta", float(self.eta))
        if self.refine is not None and self.fusion != "mean":
            raise ValueError(f"refine={self.refine!r} replaces the fusion (a CRF on the "
                             "members' masks): use it with fusion='mean'")

    @classmethod
    def of(cls, options: "SegmentOptions | None" = None, **changes) -> "SegmentOptions":
        """`options` (or the defaults) with `changes`; unknown names are a TypeError that
        lists the known ones."""
        unknown = sorted(set(changes) - FIELDS)
        if unknown:
            raise TypeError(f"unknown segment option(s) {unknown}; known: {sorted(FIELDS)}")
        if options is None:
            return cls(**changes)
        if not isinstance(options, SegmentOptions):
            raise TypeError(f"options must be a SegmentOptions, got {type(options).__name__}")
        return dataclasses.replace(options, **changes) if changes else options

    def replace(self, **changes) -> "SegmentOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = frozenset(f.name for f in dataclasses.fields(SegmentOptions))


@dataclass(frozen=True)
class Choices:
    """What one model accepts, declared by its family (`ModelFamily.choices`): the first of
    each tuple is its default. `T` bounds steps; `sampler_defaults` (steps, ensemble,
    spacing) and `postprocess` are the model file's own settings; `spacings` the grids its
    DDIM can walk; `steps_apply` the samplers that take `steps`."""
    samplers: tuple[str, ...] = ("ddim", "ddpm", "dpmpp")
    fusions: tuple[str, ...] = FUSIONS
    refines: tuple[str | None, ...] = (None, "crf")
    crops: tuple[str, ...] = ("full", "zoom")
    spacings: tuple[str, ...] = SPACINGS
    steps_apply: tuple[str, ...] = ("ddim", "dpmpp")
    T: int = 1000
    sampler_defaults: dict | None = None
    postprocess: str | None = None
    zoom_outside: str | None = None            # the file's own (ZOOM_OUTSIDE); None: "pass1"
    zoom_passes: int | None = None             # the file's own (ZOOM_PASSES); None: 2
    zoom_boxes: int | None = None              # the file's own (ZOOM_BOXES); None: 1
    default_ensemble: int | None = None        # None: CLASSIC_SAMPLING's


def parse_setting(text: str, flag: str) -> tuple[int, int, str]:
    """'STEPS,MEMBERS,SPACING' (e.g. '5,25,trailing') -> (steps, members, spacing): a
    sampler setting given as one value (train --val-setting, a model file's defaults);
    `flag` names it in the error."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) >= 1 for p in parts[:2]) \
            or parts[2] not in SPACINGS:
        raise ValueError(f"{flag} must be STEPS,MEMBERS,SPACING (two integers >= 1 and "
                         f"{' or '.join(SPACINGS)}, e.g. 5,25,trailing), got {text!r}")
    return int(parts[0]), int(parts[1]), parts[2]


def resolve(options: SegmentOptions, choices: Choices, note=None) -> SegmentOptions:
    """`options` with every None filled from the model's `choices` and checked against
    them, once. `note(text)` hears about a default that had to give way (steps above T).
    An already resolved object comes back unchanged."""
    o = options
    crop = o.crop or choices.crops[0]
    for name, v, allowed in (("fusion", o.fusion, choices.fusions),
                             ("refine", o.refine, choices.refines),
                             ("crop", crop, choices.crops)):
        if v not in allowed:
            raise ValueError(f"{name}={v!r} is not available for this model; it accepts "
                             f"{', '.join(repr(a) for a in allowed)}")
    zoom_outside, zoom_passes, zoom_boxes = zoom_settings(
        crop, o.zoom_outside, o.zoom_passes, choices.zoom_outside, choices.zoom_passes,
        zoom_boxes=o.zoom_boxes, own_boxes=choices.zoom_boxes)
    if not choices.samplers:                 # no sampling loop (DiffSeg: once at t = 0)
        for name in ("sampler", "steps", "spacing"):
            if getattr(o, name) is not None:
                raise ValueError(f"{name} does not apply to this model: it has no sampling "
                                 f"loop (its networks run once at t = 0)")
        ensemble = o.ensemble or choices.default_ensemble or CLASSIC_SAMPLING["ensemble"]
        return dataclasses.replace(o, ensemble=ensemble, crop=crop, zoom_outside=zoom_outside,
                                   zoom_passes=zoom_passes, zoom_boxes=zoom_boxes,
                                   postprocess=_postprocess(o.postprocess, choices))
    sampler = o.sampler or choices.samplers[0]
    if sampler not in choices.samplers:
        raise ValueError(f"sampler={sampler!r} is not available for this model; it accepts "
                         f"{', '.join(repr(a) for a in choices.samplers)}")
    given = (o.steps, o.ensemble, o.spacing)
    if given == (None, None, None) and sampler == choices.samplers[0] \
            and choices.sampler_defaults:
        steps, ensemble, spacing = (choices.sampler_defaults[k]
                                    for k in ("steps", "ensemble", "spacing"))
    else:
        c = CLASSIC_SAMPLING
        steps = c["steps"] if o.steps is None else o.steps
        ensemble = (choices.default_ensemble or c["ensemble"]) if o.ensemble is None \
            else o.ensemble
        spacing = c["spacing"] if o.spacing is None else o.spacing
    if sampler in choices.steps_apply and steps > choices.T:
        if o.steps is not None:
            raise ValueError(f"steps must be an integer in 1..{choices.T} (this model's T), "
                             f"got {steps}")
        if note is not None:
            note(f"the default {steps} steps exceed this model's T = {choices.T}; "
                 f"running {choices.T}")
        steps = choices.T
    if spacing not in choices.spacings:
        raise ValueError(f"spacing={spacing!r} is not available for this model; it accepts "
                         f"{', '.join(repr(s) for s in choices.spacings)}")
    if spacing != "leading" and sampler != "ddim":
        raise ValueError(f"spacing applies to the DDIM sampler, not {sampler!r}")
    return dataclasses.replace(o, steps=steps, ensemble=ensemble, spacing=spacing,
                               sampler=sampler, crop=crop, zoom_outside=zoom_outside,
                               zoom_passes=zoom_passes, zoom_boxes=zoom_boxes,
                               postprocess=_postprocess(o.postprocess, choices))


def zoom_settings(crop: str | None, zoom_outside: str | None, zoom_passes: int | None,
                  own_outside: str | None = None, own_passes: int | None = None,
                  flags: bool = False, zoom_boxes: int | None = None,
                  own_boxes: int | None = None) -> tuple[str, int, int]:
    """(zoom_outside, zoom_passes, zoom_boxes) for `crop`: each the one asked for, else the
    model file's own (`own_outside`, `own_passes`, `own_boxes`), else the default
    ("pass1", 2, 1). Only crop="zoom" has passes and a box to be outside of: there the
    file's own apply; with another crop they are the defaults (nothing changes), and a
    non-default value asked for is an error (`check_zoom_settings`; `flags`: worded for
    the command line), as refine with a fusion other than "mean" is (it would do
    nothing). segment() and the command line resolve them here."""
    check_zoom_settings(crop, zoom_outside, zoom_passes, flags, zoom_boxes)
    if crop != "zoom":
        return ZOOM_OUTSIDE[0], ZOOM_PASSES[0], ZOOM_BOXES[0]
    return (zoom_outside or own_outside or ZOOM_OUTSIDE[0],
            zoom_passes or own_passes or ZOOM_PASSES[0],
            zoom_boxes or own_boxes or ZOOM_BOXES[0])


def check_zoom_settings(crop: str | None, zoom_outside: str | None,
                        zoom_passes: int | None, flags: bool = False,
                        zoom_boxes: int | None = None) -> None:
    """The one check that zoom_outside / zoom_passes / zoom_boxes other than their defaults
    come with crop="zoom" (`crop`: the resolved crop, or words saying what it is); a
    ValueError naming them as segment()'s arguments, or with `flags` as the command line's
    --zoom-outside / --zoom-passes / --zoom-boxes / --crop."""
    if crop == "zoom":
        return
    for name, value, default in (("zoom_outside", zoom_outside, ZOOM_OUTSIDE[0]),
                                 ("zoom_passes", zoom_passes, ZOOM_PASSES[0]),
                                 ("zoom_boxes", zoom_boxes, ZOOM_BOXES[0])):
        if value is None or value == default:
            continue
        if flags:
            raise ValueError(f"--{name.replace('_', '-')} {value} applies to --crop zoom "
                             f"(its passes and finest box); this run's crop is {crop}")
        raise ValueError(f"{name}={value!r} applies to crop='zoom' (its passes and finest "
                         f"box); this call's crop is {crop!r}")


def _postprocess(value: str | None, choices: Choices) -> str:
    """"auto" -> the model file's own clean-up; None -> "none"."""
    if value == "auto":
        return choices.postprocess or "none"
    return "none" if value is None else value
