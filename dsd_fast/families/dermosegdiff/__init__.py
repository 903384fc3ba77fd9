"""DermoSegDiff (Bozorgpour et al., MICCAI 2023 PRIME): the first family.

    config.py       ModelConfig, the published and the small CPU configurations
    layers.py       blocks of the reference network (published key names)
    reference.py    the reference network, bit-identical to the published code
    checkpoint.py   published training checkpoints and state dicts; config from shapes
    fast.py         the fast model: folded weights, fused ops (imports dsd_fast.ops)
    fast_attention.py  its linear attention (resampling: ../fast_resample.py, shared)

The network predicts noise: net(x_t, image, t) -> eps_hat, with x_t the noisy mask in
[-1, 1] and image the RGB image resized to S x S and min-max normalised per image.
"""
from __future__ import annotations

from ...diffusion import Schedule
from ...preprocess import Preprocessing
from ..base import ModelFamily
from ..shared.warm_start import image_conv_for_channels
from . import checkpoint as _ckpt
from .config import CONFIGS, ModelConfig, get_config
from .layers import resize_ff_weight
from .reference import DermoSegDiff, build_model


class DermoSegDiffFamily(ModelFamily):
    name = "dermosegdiff"
    title = "DermoSegDiff"
    config_class = ModelConfig
    configs = CONFIGS
    signature_keys = _ckpt.SIGNATURE_KEYS

    def training_loss(self, net, config, image, x0, schedule, gen, options):
        """Published: t ~ randint(1, T) (t = 0 is never trained), eps-MSE + the boundary
        term (loss.py)."""
        from ...diffusion.training import draw_t_and_noise
        from .loss import dermosegdiff_loss
        t, noise = draw_t_and_noise(gen, 1, schedule.T, x0)
        eps_hat = net(schedule.q_sample(x0, t, noise), image, t)
        return dermosegdiff_loss(eps_hat, noise, x0, t, schedule.T, options.gamma,
                                 options.boundary_loss)

    def image_channels(self, config) -> int:
        return config.channels_g

    def mask_channels(self, config) -> int:
        return config.channels_x

    def build_reference(self, config: ModelConfig) -> DermoSegDiff:
        return DermoSegDiff(config)

    def build_fast(self, net):
        from .fast import build_fast_model      # the fast path imports the ops: only here
        return build_fast_model(net)

    def owns(self, net) -> bool:
        return isinstance(net, DermoSegDiff)

    def prediction(self, config) -> str:
        return "eps"

    def default_schedule(self, config) -> Schedule:
        return Schedule.published()

    def preprocessing(self, config: ModelConfig) -> Preprocessing:
        return Preprocessing(image_size=config.image_size, resize="bilinear", normalise="minmax")

    def chain_bytes(self, config: ModelConfig) -> int:
        """The feature maps of both streams at every level, ~12 float32 copies alive at once
        (skips kept for the decoder, residual and norm temporaries). Deliberately high."""
        s = config.image_size
        per = sum((cx + cg) * max(1, s >> lvl) ** 2
                  for lvl, (cx, cg) in enumerate(zip(config.dims_x, config.dims_g)))
        return 4 * 12 * per

    def recognises(self, state_dict) -> bool:
        return _ckpt.recognises(state_dict)

    def state_dict_from(self, obj):
        return _ckpt.state_dict_from(obj)

    def infer_config(self, state_dict, **settings) -> ModelConfig:
        return _ckpt.infer_config(state_dict, **settings)

    def adapted_state_dict(self, state_dict, source: ModelConfig, target: ModelConfig):
        """Another input size (FF-Parser gates resized) and/or another image channel count:
        3 -> 1 sums the first image convolution over colours (exactly the RGB model on a
        replicated gray image), 1 -> 3 spreads it (a third to each colour). A binary model
        may also start a model of K classes (mask channels 1 -> K): the mask's first
        convolution is spread over the K channels (1/K each) and the output layer repeated,
        so every class starts as the binary model's foreground (the same network when all K
        masks are equal); training then tells the classes apart. In noise terms each output
        first predicts the mean of the K channels' noise (noise MSE ~0.5 for K = 2); the
        Drishti-GS disc+cup run left that within its first 500 steps (MSE 0.02)."""
        if source.replace(image_size=target.image_size, channels_g=target.channels_g,
                          channels_x=target.channels_x, out_dim=target.out_dim) != target:
            return super().adapted_state_dict(state_dict, source, target)
        out = dict(state_dict)
        if (source.channels_x, source.out_dim) != (target.channels_x, target.out_dim):
            k = target.channels_x
            if (source.channels_x, source.out_dim) != (1, 1) or target.out_dim != k:
                raise ValueError(f"mask channels {source.channels_x} -> {target.channels_x}: "
                                 "only a binary model starts a model of K classes")
            out["init_conv_x.weight"] = (out["init_conv_x.weight"] / k).repeat(1, k, 1, 1)
            out["final_conv.weight"] = out["final_conv.weight"].repeat(k, 1, 1, 1)
            out["final_conv.bias"] = out["final_conv.bias"].repeat(k)
        if source.image_size != target.image_size:
            out = self.resized_state_dict(out, source, target.image_size)
        if source.channels_g != target.channels_g:
            out["init_conv_g.weight"] = image_conv_for_channels(out["init_conv_g.weight"],
                                                                target.channels_g)
        return out

    def resized_state_dict(self, state_dict, config: ModelConfig, image_size: int):
        """Only the FF-Parser gates depend on the input size (no position embeddings):
        each level's gate is carried over frequency by frequency (resize_ff_weight)."""
        new = config.replace(image_size=image_size)        # checks divisibility
        out = dict(state_dict)
        for level in range(config.levels):
            key = f"encoder_blocks.{level}.0.ff_parser.weight"
            if key in out:
                out[key] = resize_ff_weight(out[key], new.level_size(level))
        return out


DERMOSEGDIFF = DermoSegDiffFamily()

__all__ = ["DERMOSEGDIFF", "DermoSegDiffFamily", "DermoSegDiff", "build_model", "ModelConfig",
           "CONFIGS", "get_config"]
