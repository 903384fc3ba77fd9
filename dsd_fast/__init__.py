"""dsd_fast: fast, faithful inference for diffusion segmenters of medical images.

    pipe = dsd_fast.load()                       # the bundled default model
    results = pipe.segment(["lesion.jpg"])       # or dsd_fast.segment(["lesion.jpg"])

Layout (docs/architecture.md): api.py (load, segment), segmenter.py (the protocol and its
batched loop), pipeline.py (mask-diffusion segmenters), options.py (SegmentOptions),
families/ (one folder per network family, registered by name), diffusion/ (schedules and
samplers), ops/ (fused kernels and their twins), cli/ (the `dsd-fast` command), train/
(training), and images / preprocess / results / checkpoint / io / metrics / uncertainty /
crf beside them.
"""
from __future__ import annotations

import importlib

from . import interrupt_at_start  # noqa: F401  (first: a Ctrl-C while torch imports)
from .api import Pipeline, Segmenter, load, pipeline_from_network, segment
from .checkpoint import CheckpointError, load_model, save_model
from .families import FAMILIES, get_family, register
from .images import ImageInputError
from .options import SegmentOptions
from .preprocess import Preprocessing
from .results import SegmentationResult
from .version import __version__


# Names kept at the top level for convenience, resolved on first use: the command line's
# batch driver (it imports the CLI), and DermoSegDiff's builders (found through the family
# registry, so this file names no family module).
_LAZY = {"segment_files": ("dsd_fast.cli.run", "segment_files")}
_DERMOSEGDIFF_NAMES = ("DermoSegDiff", "build_model", "ModelConfig", "get_config", "CONFIGS")


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _DERMOSEGDIFF_NAMES:
        package = type(get_family("dermosegdiff")).__module__
        return getattr(importlib.import_module(package), name)
    raise AttributeError(f"module 'dsd_fast' has no attribute {name!r}")


__all__ = ["load", "segment", "Pipeline", "Segmenter", "SegmentOptions",
           "pipeline_from_network", "segment_files", "SegmentationResult", "load_model",
           "save_model", "CheckpointError", "ImageInputError", "Preprocessing", "FAMILIES",
           "get_family", "register", *_DERMOSEGDIFF_NAMES]
