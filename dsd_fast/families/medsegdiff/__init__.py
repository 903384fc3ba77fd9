"""MedSegDiff as lucidrains' `med-seg-diff-pytorch` 0.3.3 builds it (MIT; Wu et al., MIDL
2023, re-implemented): the second family.

    config.py       MedSegDiffConfig (network + the wrapper's diffusion settings)
    layers.py       blocks: plain-conv ResnetBlock, channel LayerNorm, attentions, Conditioning
    reference.py    the reference network, bit-identical to the package's Unet
    checkpoint.py   Unet / wrapper / driver files; config from shapes
    sampling.py     the package's own DDPM and DDIM, step for step (parity)
    fast.py         the fast model (imports dsd_fast.ops)

net(x_t, image, t[, x_self_cond]) returns the objective's prediction (noise by default);
x_t is the noisy mask in [-1, 1], image the picture in [0, 1] at exactly image_size.
"""
from __future__ import annotations

from ...diffusion import Schedule
from ...preprocess import Preprocessing
from ..base import ModelFamily
from ..shared.warm_start import image_conv_for_channels
from . import checkpoint as _ckpt
from .config import MSD_CONFIGS, OBJECTIVES, MedSegDiffConfig
from .reference import MedSegDiffUnet, build_medsegdiff
from .sampling import conventions


class MedSegDiffFamily(ModelFamily):
    name = "medsegdiff"
    title = "MedSegDiff (med-seg-diff-pytorch)"
    config_class = MedSegDiffConfig
    configs = MSD_CONFIGS
    signature_keys = _ckpt.SIGNATURE_KEYS

    def training_loss(self, net, config, image, x0, schedule, gen, options):
        from .loss import medsegdiff_loss
        return medsegdiff_loss(net, image, x0, schedule, config.objective,
                               config.self_condition, gen)

    def image_channels(self, config) -> int:
        return config.input_img_channels

    def mask_channels(self, config) -> int:
        return config.mask_channels

    def build_reference(self, config: MedSegDiffConfig) -> MedSegDiffUnet:
        return MedSegDiffUnet(config)

    def build_fast(self, net):
        from .fast import build_fast_model      # the fast path imports the ops: only here
        return build_fast_model(net)

    def owns(self, net) -> bool:
        return isinstance(net, MedSegDiffUnet) or getattr(net, "family_name", "") == self.name

    def prediction(self, config: MedSegDiffConfig) -> str:
        return OBJECTIVES[config.objective]

    def default_schedule(self, config: MedSegDiffConfig) -> Schedule:
        if config.beta_schedule == "cosine":
            return Schedule.cosine(config.timesteps)
        return Schedule.scaled_linear(config.timesteps)

    def sampling_conventions(self, config: MedSegDiffConfig):
        return conventions(config)

    def preprocessing(self, config: MedSegDiffConfig) -> Preprocessing:
        # the package feeds ToTensor() images: [0, 1], no normalisation, resized to S x S
        return Preprocessing(image_size=config.image_size, resize="bilinear", normalise="none")

    def chain_bytes(self, config: MedSegDiffConfig) -> int:
        """Both encoders' and the decoder's maps, ~12 float32 copies alive. Deliberately high."""
        per = sum(3 * d * config.level_size(i) ** 2 for i, d in enumerate(config.dims[:-1]))
        return 4 * 12 * per

    def recognises(self, state_dict) -> bool:
        return _ckpt.recognises(state_dict)

    def state_dict_from(self, obj):
        return _ckpt.state_dict_from(obj)

    def infer_config(self, state_dict, **settings) -> MedSegDiffConfig:
        return _ckpt.infer_config(state_dict, **settings)

    def adapted_state_dict(self, state_dict, source: MedSegDiffConfig,
                           target: MedSegDiffConfig):
        """Another image channel count (a grayscale model from a colour one, or back): the
        conditioning stem's 7x7 convolution summed over colours or spread over them, so the
        new network starts out computing what the old one computes on a replicated gray
        image. Nothing else carries over: the FF-Parser maps fix the input size."""
        if source.replace(input_img_channels=target.input_img_channels) != target:
            return super().adapted_state_dict(state_dict, source, target)
        out = dict(state_dict)
        out["cond_init_conv.weight"] = image_conv_for_channels(out["cond_init_conv.weight"],
                                                               target.input_img_channels)
        return out

    def settings_from(self, obj) -> dict:
        return _ckpt.diffusion_settings(obj, {})


MEDSEGDIFF = MedSegDiffFamily()

__all__ = ["MEDSEGDIFF", "MedSegDiffFamily", "MedSegDiffUnet", "MedSegDiffConfig",
           "build_medsegdiff", "MSD_CONFIGS"]
