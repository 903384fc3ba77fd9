"""MedSegDiff (med-seg-diff-pytorch) files: what users save, and the config read back.

Accepted (medsegdiff.md 1.8):
  * a bare `Unet` state dict (`torch.save(unet.state_dict())`);
  * the driver script's training checkpoint: {'epoch', 'model_state_dict', ...};
  * a `MedSegDiff` wrapper state dict: the Unet's keys under `model.` plus the 12 schedule
    buffers (`betas`, `alphas_cumprod`, ...), from which T and the schedule kind are read;
  * any of these with a `module.` prefix (a DistributedDataParallel model saved as it was).

Recovered from shapes: dim, image size, channels, dim_mults, per-level full/linear attention,
self-conditioning, mid depth, skip_connect_condition_fmaps, the dynamic FF-Parser and its
ViT's patch size, depth and head width. Not recoverable, so settings with the package's
defaults: `resnet_block_groups` (8), the split of the 3 x heads x dim_head qkv width
(4 x 32: any other width needs `attn_heads`), and what the network was trained to predict
(`objective`, pred_noise). The schedule (`timesteps`, `beta_schedule`; 1000, cosine) comes
from the wrapper's buffers when present, else from the settings (a warning says when T was
assumed: the driver script stores it nowhere).
"""
from __future__ import annotations

import re
import warnings

import torch

from ...diffusion import Schedule
from .config import MedSegDiffConfig

SIGNATURE_KEYS = ("init_conv.weight", "cond_init_conv.weight",
                  "conditioners.0.ff_parser_attn_map", "final_conv.weight")
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                    "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")
PACKAGE_DEFAULTS = dict(resnet_block_groups=8, attn_heads=4, attn_dim_head=32,
                        objective="pred_noise", timesteps=1000, beta_schedule="cosine")


class ConfigInferenceError(ValueError):
    """Shapes do not tell a MedSegDiff config (the message says what to pass)."""


class AssumedSettingsWarning(UserWarning):
    """A MedSegDiff setting the file does not store was taken from the package's defaults."""


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def state_dict_from(obj) -> dict[str, torch.Tensor] | None:
    """The Unet's state dict inside a loaded object, or None if there is none."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("model_state_dict"), dict):      # the driver's checkpoint
        obj = obj["model_state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "model.", "module.model."):
        if any(k.startswith(prefix + "init_conv.") for k in tensors):
            return _strip(tensors, prefix)
    return tensors or None


def recognises(sd: dict) -> bool:
    return all(k in sd for k in SIGNATURE_KEYS)


def schedule_buffers(obj) -> dict[str, torch.Tensor]:
    """The wrapper's schedule buffers (empty for bare Unet files)."""
    if not isinstance(obj, dict):
        return {}
    for prefix in ("", "module."):
        found = {k: obj[prefix + k] for k in SCHEDULE_BUFFERS
                 if isinstance(obj.get(prefix + k), torch.Tensor)}
        if "betas" in found:
            return found
    return {}


def _need(sd, key):
    if key not in sd:
        raise ConfigInferenceError(f"cannot infer the MedSegDiff config: key {key!r} is "
                                   "missing. Is this a med-seg-diff-pytorch Unet state dict?")
    return sd[key].shape


def diffusion_settings(obj, given: dict) -> dict:
    """timesteps and beta_schedule: from the wrapper's betas when the file has them (the
    kind is the one whose float64 betas round to them), else the given settings."""
    buffers = schedule_buffers(obj)
    if "betas" not in buffers:
        return {}
    betas = buffers["betas"].double()
    T = betas.numel()
    for kind, build in (("cosine", Schedule.cosine), ("linear", Schedule.scaled_linear)):
        if torch.allclose(build(T).betas.float().double(), betas, rtol=0, atol=1e-9):
            return {"timesteps": T, "beta_schedule": kind}
    raise ConfigInferenceError(
        f"the file's {T} schedule betas are neither the package's cosine nor its linear "
        "schedule; this loader knows only those")


def infer_config(sd: dict[str, torch.Tensor], **settings) -> MedSegDiffConfig:
    """The config from shapes plus `settings` for what shapes cannot tell (module docstring);
    a setting given for a recoverable field must agree with the weights."""
    unknown = set(settings) - set(PACKAGE_DEFAULTS)
    if unknown:
        raise ConfigInferenceError(f"unknown MedSegDiff settings {sorted(unknown)}; known: "
                                   f"{sorted(PACKAGE_DEFAULTS)}")
    if "timesteps" not in settings:
        warnings.warn(
            f"this MedSegDiff file does not store its diffusion steps T (a bare Unet state "
            f"dict, or the driver's checkpoint); assumed timesteps="
            f"{PACKAGE_DEFAULTS['timesteps']} (the package's default). Pass timesteps= "
            "(CLI: --model-setting timesteps=N) if it was trained otherwise (the driver's "
            "--timesteps).", AssumedSettingsWarning, stacklevel=4)
    s = {**PACKAGE_DEFAULTS, **settings}
    dim, in_mask = _need(sd, "init_conv.weight")[:2]
    img_ch = _need(sd, "cond_init_conv.weight")[1]
    mask_ch = _need(sd, "final_conv.weight")[0]
    size = _need(sd, "conditioners.0.ff_parser_attn_map")[-1]
    levels = 0
    while f"conditioners.{levels}.ff_parser_attn_map" in sd:
        levels += 1
    outs = []
    for i in range(levels):
        key = f"downs.{i}.3.weight" if i == levels - 1 else f"downs.{i}.3.1.weight"
        outs.append(_need(sd, key)[0])
    if any(o % dim for o in outs):
        raise ConfigInferenceError(f"level widths {outs} are not multiples of dim {dim}")
    full = tuple(f"downs.{i}.2.fn.to_out.weight" in sd for i in range(levels))
    mid_depth = len({int(m.group(1)) for k in sd
                     for m in [re.match(r"mid_transformer\.layers\.(\d+)\.", k)] if m})
    skip_in = _need(sd, "ups.0.0.block1.proj.weight")[1]
    dims = [dim] + outs
    skip_cond = skip_in == dims[-1] + 2 * dims[-2]      # the deepest decoder level's input
    hidden = _need(sd, "downs.0.2.fn.to_qkv.weight")[0] // 3
    heads, dim_head = s["attn_heads"], s["attn_dim_head"]
    if "attn_heads" in settings and "attn_dim_head" not in settings:
        dim_head = hidden // heads
    elif "attn_dim_head" in settings and "attn_heads" not in settings:
        heads = hidden // dim_head
    if heads * dim_head != hidden:
        raise ConfigInferenceError(
            f"the attention width is {hidden} = heads x dim_head, which the weights do not "
            f"split; pass attn_heads=... (the package's default 4 x 32 makes 128)")
    dyn_key = "conditioners.0.to_dynamic_ff_parser_attn_map.to_tokens.1.weight"
    dynamic = dyn_key in sd
    cond = {}
    if dynamic:
        patch = int(round((sd[dyn_key].shape[1] / (4 * dim)) ** 0.5))
        layers = {int(m.group(1)) for k in sd for m in [re.match(
            r"conditioners\.0\.to_dynamic_ff_parser_attn_map\.transformer\.layers\.(\d+)\.", k)]
            if m}
        qkv = sd["conditioners.0.to_dynamic_ff_parser_attn_map.transformer.layers.0.0.fn."
                 "to_qkv.weight"].shape[0]
        cond = dict(cond_patch_size=patch, cond_depth=len(layers), cond_dim_head=qkv // 12)
    try:
        return MedSegDiffConfig(
            dim=dim, image_size=size, dim_mults=tuple(o // dim for o in outs), full_self_attn=full,
            attn_heads=heads, attn_dim_head=dim_head, mid_transformer_depth=mid_depth,
            self_condition=in_mask == 2 * mask_ch, resnet_block_groups=s["resnet_block_groups"],
            skip_connect_condition_fmaps=bool(skip_cond), dynamic_ff_parser=dynamic,
            mask_channels=mask_ch, input_img_channels=img_ch, timesteps=s["timesteps"],
            beta_schedule=s["beta_schedule"], objective=s["objective"], **cond)
    except ValueError as e:
        raise ConfigInferenceError(str(e)) from None
