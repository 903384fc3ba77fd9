"""DiffSeg files: each model is a plain `torch.save(model.state_dict())` (diffseg.md 9):
no wrapper, no config. Recovered from shapes: model_channels, channel_mult,
num_res_blocks, attention resolutions, in/out channels. Not recoverable, so settings with
the newest code's values: num_heads (4: 1 head gives other outputs), timesteps T (1000; the
initial notebook used 200), input_range ("-1..1"; the newest "have" training fed 0..1),
image_size (128, the size images are resized to) and the GroupNorm groups (32).
"""
from __future__ import annotations

import re
import warnings

import torch

from ..base import plain_state_dict
from .config import DiffSegConfig

SIGNATURE_KEYS = ("time_embed.0.weight", "down_blocks.0.0.weight",
                  "middle_block.1.qkv.weight", "out.2.weight")
DEFAULTS = dict(num_heads=4, timesteps=1000, input_range="-1..1", groups=32, image_size=128)
# what changes the masks silently when wrong; announced when assumed (groups: 32 everywhere)
ANNOUNCED = ("timesteps", "input_range", "num_heads", "image_size")


class ConfigInferenceError(ValueError):
    """Shapes do not tell a DiffSeg config."""


class AssumedSettingsWarning(UserWarning):
    """A DiffSeg setting no checkpoint stores was taken from the defaults."""


def state_dict_from(obj) -> dict[str, torch.Tensor] | None:
    return plain_state_dict(obj)


def recognises(sd: dict) -> bool:
    return all(k in sd for k in SIGNATURE_KEYS)


def infer_config(sd: dict[str, torch.Tensor], **settings) -> DiffSegConfig:
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ConfigInferenceError(f"unknown DiffSeg settings {sorted(unknown)}; known: "
                                   f"{sorted(DEFAULTS)}")
    s = {**DEFAULTS, **settings}
    assumed = [f"{k}={DEFAULTS[k]!r}" for k in ANNOUNCED if k not in settings]
    if assumed:
        warnings.warn(
            f"DiffSeg files do not store T, the input range, the head count or the image "
            f"size; assumed {', '.join(assumed)} (the newest official code's values). Pass "
            "timesteps=, input_range=, num_heads=, image_size= (CLI: --model-setting "
            "KEY=VALUE) if your model was trained otherwise (the initial notebook used "
            "T=200).", AssumedSettingsWarning, stacklevel=4)
    for k in SIGNATURE_KEYS:
        if k not in sd:
            raise ConfigInferenceError(f"cannot infer the DiffSeg config: key {k!r} is "
                                       "missing. Is this a DiffSeg UNetModel state dict?")
    C, cin = sd["down_blocks.0.0.weight"].shape[:2]
    cout = sd["out.2.weight"].shape[0]
    stages = sorted({int(m.group(1)) for k in sd for m in [re.match(r"down_blocks\.(\d+)\.", k)]
                     if m})
    # walk the encoder: a stage holding `op` downsamples; residual stages set the width
    mults, blocks, width, attn, level_blocks, ds = [], [], C, [], 0, 1
    for i in stages[1:]:
        if f"down_blocks.{i}.0.op.weight" in sd:
            mults.append(width // C)
            blocks.append(level_blocks)
            level_blocks, ds = 0, ds * 2
            continue
        width = sd[f"down_blocks.{i}.0.conv1.2.weight"].shape[0]
        level_blocks += 1
        if f"down_blocks.{i}.1.qkv.weight" in sd and ds not in attn:
            attn.append(ds)
    mults.append(width // C)
    blocks.append(level_blocks)
    if len(set(blocks)) != 1:
        raise ConfigInferenceError(f"levels have {blocks} residual blocks; expected one count")
    try:
        return DiffSegConfig(model_channels=C, channel_mult=tuple(mults),
                             num_res_blocks=blocks[0], attention_resolutions=tuple(attn),
                             in_channels=cin, out_channels=cout, **s)
    except ValueError as e:
        raise ConfigInferenceError(str(e)) from None
