"""DermoSegDiff checkpoints: the published training files, bare state dicts, and the
config read back from tensor shapes.

The published training script saves `torch.save` of a dict with `model`, `ema`,
`optimizer`, ...; its EMA weights (`ema` -> keys `ema_model.*`) are the ones to use, else
`model`. A bare state dict has the network's keys at the top level. Key names are the
published ones (../shared/docs/dermosegdiff.md section 7).
"""
from __future__ import annotations

import torch

from .config import ModelConfig

PUBLISHED_GROUPS = 8            # all published configs; GroupNorm shapes cannot reveal it
PUBLISHED_IMAGE_SIZE = 128
# Keys every DermoSegDiff state dict has, whatever its config: how the family is recognised.
SIGNATURE_KEYS = ("time_mlp_x.1.weight", "time_mlp_g.1.weight",
                  "encoder_blocks.0.0.rb_x1.rb.block1.proj.weight", "final_conv.weight")


class ConfigInferenceError(ValueError):
    """Shapes do not tell a DermoSegDiff config (the message names the key)."""


def state_dict_from(obj) -> dict[str, torch.Tensor] | None:
    """Published training checkpoint / bare state dict -> the network's state dict, or None
    when the object holds no tensors where DermoSegDiff files keep them."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("ema"), dict):
        ema = {k[len("ema_model."):]: v for k, v in obj["ema"].items()
               if k.startswith("ema_model.")}
        if ema:
            return ema
    if isinstance(obj.get("model"), dict):
        return dict(obj["model"])
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors or None


def recognises(sd: dict) -> bool:
    return all(k in sd for k in SIGNATURE_KEYS)


def _shape(sd, key) -> torch.Size:
    if key not in sd:
        raise ConfigInferenceError(
            f"cannot infer the model config: key {key!r} is missing. Is this a DermoSegDiff "
            "checkpoint? Pass config=... to say what it is.")
    return sd[key].shape


def infer_config(sd: dict[str, torch.Tensor], resnet_block_groups: int = PUBLISHED_GROUPS
                 ) -> ModelConfig:
    """dim_x, dim_g, mults, FF-Parser switch (and its image size) from tensor shapes.

    GroupNorm groups cannot be read from shapes; the published value 8 is assumed unless
    `resnet_block_groups` says otherwise. Without an FF-Parser the image size cannot be read
    either: the published 128 is assumed (the network itself works at any multiple of
    2^(levels-1); the preprocessing resizes to this size).
    """
    dim_x = _shape(sd, "time_mlp_x.1.weight")[1]
    dim_g = _shape(sd, "time_mlp_g.1.weight")[1]
    levels = 0
    while f"encoder_blocks.{levels}.0.rb_x1.rb.block1.proj.weight" in sd:
        levels += 1
    if levels == 0:
        _shape(sd, "encoder_blocks.0.0.rb_x1.rb.block1.proj.weight")
    last = levels - 1
    dims_x = [_shape(sd, f"encoder_blocks.{i}.0.rb_x1.rb.block1.proj.weight")[0]
              for i in range(1, levels)] + [_shape(sd, f"encoder_blocks.{last}.2.weight")[0]]
    dims_g = [_shape(sd, f"encoder_blocks.{i}.0.rb_g1.rb.block1.proj.weight")[0]
              for i in range(1, levels)] + [_shape(sd, f"encoder_blocks.{last}.1.weight")[0]]
    for d, base, name in [(dims_x, dim_x, "x"), (dims_g, dim_g, "g")]:
        if any(v % base for v in d):
            raise ConfigInferenceError(
                f"stream {name}: level widths {d} are not multiples of {base}")
    ff_key = "encoder_blocks.0.0.ff_parser.weight"
    ff = ff_key in sd
    size = sd[ff_key].shape[1] if ff else PUBLISHED_IMAGE_SIZE
    return ModelConfig(dim_x=dim_x, dim_g=dim_g,
                       dim_x_mults=tuple(v // dim_x for v in dims_x),
                       dim_g_mults=tuple(v // dim_g for v in dims_g),
                       resnet_block_groups=resnet_block_groups, ff_parser=ff,
                       image_size=size)
