"""Checkpoints of the official MedSegDiff code (medsegdiff.md 2.11) and the config read back.

Accepted: `savedmodel{step}.pt` and `emasavedmodel_0.9999_{step}.pt` (plain state dicts, read
with weights_only=True by checkpoint.read_file), with or without the `module.` prefix that
--multi_gpu training leaves. Not accepted: `optsavedmodel*.pt` (optimizer state, no weights).

Read from shapes: num_channels and the input channels (`input_blocks.0.0.weight`), the output
channels (`out.2.weight`), channel_mult, num_res_blocks, where attention sits, whether
resblock_updown and use_scale_shift_norm were set, V1 (FF-Parser keys) or V2.
Not stored, so settings with the README's ISIC values as defaults (a warning names the ones
assumed): image_size 256 (the size images are resized to; the network itself runs at any
multiple of 32), num_heads 1 (a wrong head count gives wrong outputs silently: the weights
fit any count that divides the width), timesteps 1000, noise_schedule "linear",
learn_sigma True.
"""
from __future__ import annotations

import re
import warnings

import torch

from ..base import plain_state_dict
from .config import OfficialMSDConfig

SIGNATURE_KEYS = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight",
                  "hwm.seg_outputs.0.weight")
DEFAULTS = dict(image_size=256, num_heads=1, num_head_channels=-1,
                use_new_attention_order=False, timesteps=1000, noise_schedule="linear",
                learn_sigma=True)
ANNOUNCED = ("image_size", "num_heads", "timesteps")


class ConfigInferenceError(ValueError):
    """Shapes do not tell an official MedSegDiff config."""


class AssumedSettingsWarning(UserWarning):
    """An official MedSegDiff setting no checkpoint stores was taken from the README's."""


def state_dict_from(obj) -> dict[str, torch.Tensor] | None:
    return plain_state_dict(obj)          # --multi_gpu (DataParallel) prefix stripped


def recognises(sd: dict) -> bool:
    return all(k in sd for k in SIGNATURE_KEYS)


def _indices(sd, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})


def _is_resblock(sd, prefix: str) -> bool:
    return f"{prefix}.in_layers.2.weight" in sd


def infer_config(sd: dict[str, torch.Tensor], **settings) -> OfficialMSDConfig:
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ConfigInferenceError(f"unknown official MedSegDiff settings {sorted(unknown)}; "
                                   f"known: {sorted(DEFAULTS)}")
    assumed = [f"{k}={DEFAULTS[k]!r}" for k in ANNOUNCED if k not in settings]
    if assumed:
        warnings.warn(
            f"official MedSegDiff checkpoints do not store the image size, the attention head "
            f"count or the diffusion steps; assumed {', '.join(assumed)} (the README's ISIC "
            "flags). Pass image_size=, num_heads=, timesteps= (CLI: --model-setting KEY=VALUE) "
            "if the model was trained with other flags.", AssumedSettingsWarning, stacklevel=4)
    s = {**DEFAULTS, **settings}
    for k in SIGNATURE_KEYS:
        if k not in sd:
            raise ConfigInferenceError(f"cannot infer the official MedSegDiff config: key {k!r}"
                                       " is missing. Is this a savedmodel*.pt of its code?")
    mc, cin = sd["input_blocks.0.0.weight"].shape[:2]
    cout = sd["out.2.weight"].shape[0]
    version = "v1" if any(k.startswith("hwm.ffparser.") for k in sd) else "v2"
    outs = _indices(sd, "output_blocks")
    # the first output block holding an upsampler (a `conv` or an up-ResBlock after the main
    # ResBlock) closes the deepest level: num_res_blocks + 1 blocks per level
    first_up = next((j for j in outs if f"output_blocks.{j}.1.conv.weight" in sd
                     or f"output_blocks.{j}.2.conv.weight" in sd
                     or _is_resblock(sd, f"output_blocks.{j}.1")
                     or _is_resblock(sd, f"output_blocks.{j}.2")), None)
    if first_up is None:
        per_level = len(outs)                                   # one level, no upsampling
    else:
        per_level = first_up + 1
    if len(outs) % per_level:
        raise ConfigInferenceError(f"{len(outs)} output blocks do not split into levels of "
                                   f"{per_level}")
    levels, nrb = len(outs) // per_level, per_level - 1
    updown = first_up is not None and (_is_resblock(sd, f"output_blocks.{first_up}.1")
                                       or _is_resblock(sd, f"output_blocks.{first_up}.2"))
    mults, attention, i = [], set(), 1
    for level in range(levels):
        for _ in range(nrb):
            width = sd[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]
            if f"input_blocks.{i}.1.qkv.weight" in sd:
                attention.add(2 ** level)
            i += 1
        if width % mc:
            raise ConfigInferenceError(f"level {level} is {width} wide, not a multiple of "
                                       f"num_channels {mc}")
        mults.append(width // mc)
        i += level != levels - 1                                # the level's downsampler
    emb_rows = sd["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    first_width = sd["input_blocks.1.0.in_layers.2.weight"].shape[0]
    try:
        return OfficialMSDConfig(
            model_channels=mc, channel_mult=tuple(mults), num_res_blocks=nrb,
            attention_ds=tuple(sorted(attention)), in_channels=cin, out_channels=cout,
            use_scale_shift_norm=emb_rows == 2 * first_width, resblock_updown=updown,
            version=version, **s)
    except ValueError as e:
        raise ConfigInferenceError(str(e)) from None
