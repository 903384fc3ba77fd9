"""DiffSeg (Shuai et al. 2024, "diffusion difference"; official code CheneyNine/DiffSeg, MIT):
the third family. Not a mask-diffusion model: two image denoisers predicting the clean
image, each called once at t = 0, and a mask from the difference of their residuals.

    config.py       DiffSegConfig (network + what no checkpoint stores: T, range, heads)
    reference.py    the U-Net, bit-identical to the official UNetModel
    checkpoint.py   the official state-dict files; config from shapes
    difference.py   residuals -> difference map -> mask, as the official code computes them
    pipeline.py     DiffSegPipeline: N draws per image, batched, masks at the original size
    fast.py         the fast U-Net at t = 0 (imports dsd_fast.ops)

`dsd_fast.load_model("model_train8.pth")` returns one U-Net, net(x_t, t) -> x0_hat; a
segmenter needs both: `DiffSegPipeline.from_files(have, no)`, or `dsd_fast.load(path)` on a
file saved by `save_diffseg` (both networks in one .safetensors).
"""
from __future__ import annotations

import torch

from ...diffusion import Schedule
from ...errors import CheckpointError
from ...options import Choices
from ...preprocess import Preprocessing
from ..base import ModelFamily
from . import checkpoint as _ckpt
from .config import DIFFSEG_CONFIGS, DiffSegConfig
from .pipeline import DiffSegPipeline, pair_from_file
from .reference import DiffSegUNet


class DiffSegFamily(ModelFamily):
    name = "diffseg"
    title = "DiffSeg (CheneyNine/DiffSeg)"
    config_class = DiffSegConfig
    configs = DIFFSEG_CONFIGS
    signature_keys = _ckpt.SIGNATURE_KEYS
    mask_diffusion = False          # no sampler: a DiffSegPipeline, not a Pipeline

    def choices(self, config) -> Choices:
        # no sampling loop; DiffSeg's own CRF protocol and its published centre crop
        return Choices(samplers=(), refines=(None, "crf", "crf-published"),
                       crops=("full", "center"), spacings=("leading",), steps_apply=(),
                       T=config.timesteps, default_ensemble=5)

    def segmenter(self, net, schedule, preprocessing, meta=None):
        raise CheckpointError(
            f"a {self.title} network is one of a pair and segments nothing alone: use "
            "dsd_fast.families.diffseg.DiffSegPipeline.from_files(have_path, no_path), or load a pair saved "
            "with dsd_fast.save_model(pipeline, 'pair.safetensors')")

    def example_inputs(self, config, batch):
        t = torch.full((batch,), 1, dtype=torch.long)
        s = config.image_size
        return (torch.randn(batch, config.in_channels, s, s), t), ("x_t", "t")

    def segmenter_from_file(self, tensors, meta, device="cpu"):
        if not any(k.startswith("have.") for k in tensors):
            return None
        return pair_from_file(tensors, meta, device)

    def image_channels(self, config) -> int:
        return config.in_channels

    def mask_channels(self, config) -> int:
        return 1                               # one foreground mask (its CRF is two-label)

    def build_reference(self, config: DiffSegConfig) -> DiffSegUNet:
        return DiffSegUNet(config)

    def build_fast(self, net):
        from .fast import build_fast_model      # the fast path imports the ops: only here
        return build_fast_model(net)

    def owns(self, net) -> bool:
        return isinstance(net, DiffSegUNet) or getattr(net, "family_name", "") == self.name

    def prediction(self, config) -> str:
        return "x0"

    def default_schedule(self, config: DiffSegConfig) -> Schedule:
        return Schedule.scaled_linear(config.timesteps)

    def preprocessing(self, config: DiffSegConfig) -> Preprocessing:
        # resized to S x S in [0, 1]; the pipeline maps to the models' range
        return Preprocessing(image_size=config.image_size, resize="bilinear", normalise="none")

    def chain_bytes(self, config: DiffSegConfig) -> int:
        """One draw: two U-Net forwards, ~12 float32 copies of every level's maps."""
        s, c = config.image_size, config.model_channels
        per = sum(c * m * (s >> lvl) ** 2 for lvl, m in enumerate(config.channel_mult))
        return 2 * 4 * 12 * per

    def recognises(self, state_dict) -> bool:
        return _ckpt.recognises(state_dict)

    def state_dict_from(self, obj):
        return _ckpt.state_dict_from(obj)

    def infer_config(self, state_dict, **settings) -> DiffSegConfig:
        return _ckpt.infer_config(state_dict, **settings)


DIFFSEG = DiffSegFamily()
DiffSegPipeline.family = DIFFSEG        # the pipeline module imports no family object


__all__ = ["DIFFSEG", "DiffSegFamily", "DiffSegUNet", "DiffSegConfig", "DIFFSEG_CONFIGS",
           "DiffSegPipeline"]
