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

from ..options import zoom_settings
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
    own = _model_defaults(model, opts)
    if opts.crop is None and own["crop"] == "zoom":
        # recorded in the run's settings: it changes every mask. Other crops of the model's
        # own stay unrecorded as before (a DiffSeg pair's), so earlier runs still match.
        opts.crop = "zoom"
    _resolve_zoom_settings(opts, own)
    if None not in (opts.steps, opts.ensemble, opts.spacing) and opts.postprocess != "auto":
        opts.postprocess = resolve_postprocess(opts.postprocess, None)
        return
    from ..options import Choices, SegmentOptions, resolve
    if own["error"] is not None:
        raise UsageError(f"cannot load the model: {own['error']}")
    # options.resolve's rule for what was not given (T is checked when the model loads)
    run = resolve(SegmentOptions(steps=opts.steps, ensemble=opts.ensemble,
                                 spacing=opts.spacing),
                  Choices(T=2 ** 31, sampler_defaults=own["sampler_defaults"]))
    opts.steps, opts.ensemble, opts.spacing = run.steps, run.ensemble, run.spacing
    opts.postprocess = resolve_postprocess(opts.postprocess, own["postprocess"])


def _model_defaults(model, opts: BatchOptions) -> dict:
    """The model's own settings, its file's header read once: {"sampler_defaults",
    "postprocess", "crop", "zoom_outside", "zoom_passes", "zoom_boxes"} (None where it has
    none) from the object, else its file's metadata; "error": a CheckpointError of metadata
    that is not valid (None otherwise). A file that cannot be read gives no defaults: the
    model's load says what is wrong."""
    from ..api import Pipeline, model_path
    from ..checkpoint import CheckpointError, read_metadata
    from ..pipeline import postprocess_from, sampler_defaults_from, zoom_defaults_from
    own = dict.fromkeys(("sampler_defaults", "postprocess", "crop", "zoom_outside",
                         "zoom_passes", "zoom_boxes", "error"))
    if isinstance(model, Pipeline):
        own.update(sampler_defaults=model.sampler_defaults,
                   postprocess=model.postprocess_default, crop=model.crop_default,
                   zoom_outside=model.zoom_outside_default,
                   zoom_passes=model.zoom_passes_default,
                   zoom_boxes=model.zoom_boxes_default)
    elif model is None or isinstance(model, (str, os.PathLike)):
        try:
            meta = read_metadata(model_path(model if model is not None else opts.checkpoint))
        except CheckpointError as e:
            own["error"] = e
            return own
        except (OSError, ValueError):          # a missing file: the model's load says so
            return own
        try:
            own.update(zoom_defaults_from(meta))
        except CheckpointError as e:           # its zoom settings apply before any load
            raise UsageError(f"cannot load the model: {e}") from None
        try:
            own.update(sampler_defaults=sampler_defaults_from(meta),
                       postprocess=postprocess_from(meta))
        except CheckpointError as e:
            own["error"] = e
    return own


def _resolve_zoom_settings(opts: BatchOptions, own: dict) -> None:
    """opts.zoom_outside / opts.zoom_passes / opts.zoom_boxes under --crop zoom
    (options.zoom_settings: the flag's, else the model's own from `own`, its file's
    metadata, else "pass1" / 2 / 1), so the run's settings record a non-default value
    wherever it runs. Without zoom a non-default flag is a usage error before the run
    starts and the file's own do not apply."""
    try:
        outside, passes, boxes = zoom_settings(
            opts.crop or "the model's own (not zoom)", opts.zoom_outside, opts.zoom_passes,
            own["zoom_outside"], own["zoom_passes"], flags=True, zoom_boxes=opts.zoom_boxes,
            own_boxes=own["zoom_boxes"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    if opts.crop == "zoom":
        opts.zoom_outside, opts.zoom_passes, opts.zoom_boxes = outside, passes, boxes


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
