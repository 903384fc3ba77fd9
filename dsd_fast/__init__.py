"""dsd_fast: fast, faithful inference for diffusion skin-lesion segmenters (DermoSegDiff)."""
from .checkpoint import CheckpointError, load_model, save_model
from .config import CONFIGS, ModelConfig, get_config
from .images import ImageInputError
from .model import DermoSegDiff, build_model
from .segmentation import SegmentationResult, segment

__version__ = "0.1.0"
__all__ = ["segment", "SegmentationResult", "load_model", "save_model", "DermoSegDiff",
           "build_model", "ModelConfig", "get_config", "CONFIGS", "CheckpointError",
           "ImageInputError"]
