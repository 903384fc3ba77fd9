"""dsd_fast: fast, faithful inference for diffusion skin-lesion segmenters.

    pipe = dsd_fast.load()                       # the bundled default model
    results = pipe.segment(["lesion.jpg"])       # or dsd_fast.segment(["lesion.jpg"])

Layout: api.py (Pipeline, load, segment), families/ (one folder per network family),
diffusion/ (schedules and samplers), ops/ (fused kernels and their twins), cli/ (the
`dsd-fast` command), train/ (training), and images / preprocess / results / checkpoint /
io / metrics / uncertainty / crf beside them.
"""
from . import _legacy
from .api import Pipeline, load, segment
from .cli.run import segment_files
from .checkpoint import CheckpointError, load_model, save_model
from .families import FAMILIES, get_family
from .families.dermosegdiff import CONFIGS, DermoSegDiff, ModelConfig, build_model, get_config
from .images import ImageInputError
from .preprocess import Preprocessing
from .results import SegmentationResult

_legacy.install()

__version__ = "0.2.0"
__all__ = ["load", "Pipeline", "segment", "segment_files", "SegmentationResult", "load_model", "save_model",
           "DermoSegDiff", "build_model", "ModelConfig", "get_config", "CONFIGS",
           "CheckpointError", "ImageInputError", "Preprocessing", "FAMILIES", "get_family"]
