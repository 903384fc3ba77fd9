"""What a `dsd-fast segment` run resolves from its model before any worker loads it: the
sampling defaults not given (steps, ensemble, spacing, the mask's clean-up, a file's
crop="zoom" and what it leaves outside its box), capped at the model's T, and the class
names of a model of several classes, so the run's settings and output names hold numbers
and names, not "auto".

It reads the model file's metadata (its header only) and loads the model here only for a
file of the original code, which carries none.
"""
from __future__ import annotations

import os
import sys

from ..options import ZOOM_OUTSIDE
from ..postprocess import resolve_postprocess
from .errors import UsageError
from .worker import BatchOptions, load_pipeline


def resolve_run_sampling(opts: BatchOptions, model, err=None) -> None:
    """Fill the steps / ensemble / spacing not given, and postprocess "auto", as segment()
    would (options.resolve, postprocess.resolve_postprocess), from the model file's
    metadata (its header only: the model loads later, in the workers). Steps not given are
    capped at the model's T, with a note on `err`."""
    steps_given = opts.steps is not None
    _resolve_sampling_defaults(opts, model)
    if steps_given:
        return                      # checked against T when the model loads
    T = _diffusion_steps(model, opts)
    if T is not None and opts.steps > T:
        print(f"note: the default {opts.steps} steps exceed this model's T = {T}; running {T}"
              " (--steps to choose)", file=err or sys.stderr)
        opts.steps = T


def resolve_run_classes(opts: BatchOptions, model) -> None:
    """opts.classes / opts.nested from the model (classes.py), before any worker loads it:
    from the object, else the file's metadata ("classes"), else by loading the file here
    (a file of the original code). One class leaves opts.classes None."""
    import json

    from ..api import model_path
    from ..checkpoint import read_metadata
    from ..classes import classes_from_metadata
    classes = nested = None
    if model is None or isinstance(model, (str, os.PathLike)):
        try:
            meta = read_metadata(model_path(model if model is not None else opts.checkpoint))
            if "classes" in meta:
                names = json.loads(meta["classes"])
                classes, nested = classes_from_metadata(meta, len(names))
            elif "family" in meta:
                # own format without classes: one class (Pipeline.file_contents writes them
                # for every model of several)
                classes = ()
        except (OSError, ValueError, KeyError, TypeError):
            pass                             # the load below says what is wrong
    if classes is None:
        pipe = model if hasattr(model, "classes") else load_pipeline(model, opts)
        if getattr(pipe, "mask_channels", 1) > 1:
            classes, nested = pipe.classes, pipe.nested
    opts.classes = tuple(classes) if classes and len(classes) > 1 else None
    opts.nested = True if nested is None else nested


def _resolve_sampling_defaults(opts: BatchOptions, model) -> None:
    if opts.crop is None:
        opts.crop = _file_zoom(model, opts)
    _resolve_zoom_outside(opts, model)
    if None not in (opts.steps, opts.ensemble, opts.spacing) and opts.postprocess != "auto":
        opts.postprocess = resolve_postprocess(opts.postprocess, None)
        return
    from ..api import Pipeline, model_path
    from ..checkpoint import CheckpointError, read_metadata
    from ..options import Choices, SegmentOptions, resolve
    from ..pipeline import postprocess_from, sampler_defaults_from
    defaults = clean_up = None
    if isinstance(model, Pipeline):
        defaults, clean_up = model.sampler_defaults, model.postprocess_default
    elif model is None or isinstance(model, (str, os.PathLike)):
        try:
            meta = read_metadata(model_path(model if model is not None else opts.checkpoint))
            defaults, clean_up = sampler_defaults_from(meta), postprocess_from(meta)
        except CheckpointError as e:
            raise UsageError(f"cannot load the model: {e}") from None
        except (OSError, ValueError):          # a missing file: the model's load says so
            pass
    # options.resolve's rule for what was not given (T is checked when the model loads)
    run = resolve(SegmentOptions(steps=opts.steps, ensemble=opts.ensemble,
                                 spacing=opts.spacing),
                  Choices(T=2 ** 31, sampler_defaults=defaults))
    opts.steps, opts.ensemble, opts.spacing = run.steps, run.ensemble, run.spacing
    opts.postprocess = resolve_postprocess(opts.postprocess, clean_up)


def _file_zoom(model, opts: BatchOptions) -> str | None:
    """"zoom" where the model's own crop is (its file's "crop" metadata; segment() runs it
    without --crop), so the run's settings record it: it changes every mask. Other crops
    stay unrecorded as before (a DiffSeg pair's own), so earlier runs still match."""
    from ..api import Pipeline, model_path
    from ..checkpoint import CheckpointError, read_metadata
    if isinstance(model, Pipeline):
        return "zoom" if model.crop_default == "zoom" else None
    if model is None or isinstance(model, (str, os.PathLike)):
        try:
            meta = read_metadata(model_path(model if model is not None else opts.checkpoint))
        except (CheckpointError, OSError, ValueError):    # the model's load says what
            return None
        return "zoom" if meta.get("crop") == "zoom" else None
    return None


def _resolve_zoom_outside(opts: BatchOptions, model) -> None:
    """opts.zoom_outside under --crop zoom: the flag's, else the model's own (its file's
    "zoom_outside" metadata), else "pass1", so the run's settings record "background"
    wherever it runs. Without zoom --zoom-outside background is a usage error (segment()'s
    check, before the run starts) and the file's own does not apply."""
    if opts.crop != "zoom":
        if opts.zoom_outside == "background":
            crop = opts.crop or "the model's own (not zoom)"
            raise UsageError("--zoom-outside background applies to --crop zoom (outside its "
                             f"finest box); this run's crop is {crop}")
        return
    if opts.zoom_outside is None:
        opts.zoom_outside = _file_zoom_outside(model, opts) or ZOOM_OUTSIDE[0]


def _file_zoom_outside(model, opts: BatchOptions) -> str | None:
    """The model's own zoom_outside: the object's, else its file's metadata (checked;
    None where the file has none or cannot be read: the model's load says what)."""
    from ..api import Pipeline, model_path
    from ..checkpoint import CheckpointError, read_metadata
    from ..pipeline import zoom_outside_from
    if isinstance(model, Pipeline):
        return model.zoom_outside_default
    if model is None or isinstance(model, (str, os.PathLike)):
        try:
            meta = read_metadata(model_path(model if model is not None else opts.checkpoint))
        except (CheckpointError, OSError, ValueError):
            return None
        try:
            return zoom_outside_from(meta)
        except CheckpointError as e:
            raise UsageError(f"cannot load the model: {e}") from None
    return None


def _diffusion_steps(model, opts: BatchOptions) -> int | None:
    """The model's T (None: it has no sampling loop), before any worker loads it: from the
    object, else the file's schedule metadata, else by loading the file here (a file of the
    original code stores T, when at all, in its tensors or in --model-setting)."""
    import json

    from ..api import model_path
    from ..checkpoint import read_metadata
    from ..diffusion import Schedule
    if model is None or isinstance(model, (str, os.PathLike)):
        try:
            meta = read_metadata(model_path(model if model is not None else opts.checkpoint))
            if "schedule" in meta:
                return Schedule.from_dict(json.loads(meta["schedule"])).T
        except (OSError, ValueError, KeyError, TypeError):
            pass                             # the load below says what is wrong
        model = load_pipeline(model, opts)
    schedule = getattr(model, "schedule", None)
    if schedule is None and not hasattr(model, "segment"):          # a bare network
        model = load_pipeline(model, opts)
        schedule = getattr(model, "schedule", None)
    return None if schedule is None else schedule.T
