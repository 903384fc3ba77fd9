"""Loading and saving models.

Accepted by `load_model`:
  * a published DermoSegDiff training checkpoint (torch.save of a dict with `model`, `ema`,
    `optimizer`, ...): the EMA weights (`ema` -> keys `ema_model.*`) are used, else `model`;
  * a bare published state dict (.pt/.pth, or an in-memory dict);
  * this project's own format: a .safetensors file whose metadata holds the model config,
    the diffusion schedule and the preprocessing as JSON.
.pt/.pth files are read with `torch.load(weights_only=True)`: no arbitrary unpickling.

When no config is given (and the file carries none) it is inferred from tensor shapes.
Loading is strict: every weight in the file is used and every parameter is filled, or the
error names the first key that does not fit.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .config import ModelConfig, Preprocessing
from .diffusion import Schedule
from .model import DermoSegDiff

FORMAT_NAME = "dsd_fast"
FORMAT_VERSION = "1"
PUBLISHED_GROUPS = 8            # all published configs; GroupNorm shapes cannot reveal it
PUBLISHED_IMAGE_SIZE = 128


class CheckpointError(ValueError):
    """A checkpoint could not be loaded; the message says what was expected."""


# ----------------------------------------------------------------------------- reading
def _read_safetensors(path: Path, with_tensors: bool) -> tuple[dict, dict]:
    """-> (tensors, or {} when not with_tensors; metadata) of a .safetensors file."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def _read_file(path: Path) -> tuple[dict, dict]:
    """-> (raw object, metadata). Metadata is empty for .pt/.pth files."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, with_tensors=True)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: could not be read as a weights-only torch checkpoint ({e}). Only "
            "tensors, numbers and dicts are accepted; arbitrary pickled objects are refused."
        ) from None
    return obj, {}


def extract_state_dict(obj) -> dict[str, torch.Tensor]:
    """Published training checkpoint / bare state dict -> the network's state dict."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of tensors, got {type(obj).__name__}")
    if isinstance(obj.get("ema"), dict):
        ema = {k[len("ema_model."):]: v for k, v in obj["ema"].items()
               if k.startswith("ema_model.")}
        if ema:
            return ema
    if isinstance(obj.get("model"), dict):
        return dict(obj["model"])
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            "no weights found: expected a state dict, or a training checkpoint with an "
            f"'ema' or 'model' entry; top-level keys were {sorted(obj)[:10]}")
    return tensors


# ----------------------------------------------------------------------------- inference
def _shape(sd, key) -> torch.Size:
    if key not in sd:
        raise CheckpointError(
            f"cannot infer the model config: key {key!r} is missing. Is this a DermoSegDiff "
            "checkpoint? Pass config=... to say what it is.")
    return sd[key].shape


def infer_config(sd: dict[str, torch.Tensor]) -> ModelConfig:
    """dim_x, dim_g, mults, FF-Parser switch (and its image size) from tensor shapes.

    GroupNorm groups cannot be read from shapes; the published value 8 is assumed.
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
            raise CheckpointError(f"stream {name}: level widths {d} are not multiples of {base}")
    ff_key = "encoder_blocks.0.0.ff_parser.weight"
    ff = ff_key in sd
    size = sd[ff_key].shape[1] if ff else PUBLISHED_IMAGE_SIZE
    return ModelConfig(dim_x=dim_x, dim_g=dim_g,
                       dim_x_mults=tuple(v // dim_x for v in dims_x),
                       dim_g_mults=tuple(v // dim_g for v in dims_g),
                       resnet_block_groups=PUBLISHED_GROUPS, ff_parser=ff, image_size=size)


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """Strict key and shape check; the error names the first key that does not fit."""
    for k, v in expected.items():
        if k not in given:
            raise CheckpointError(f"checkpoint lacks weight {k!r} (expected shape "
                                  f"{tuple(v.shape)}); it does not match the model config")
        if tuple(given[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"weight {k!r} has shape {tuple(given[k].shape)}, the model config expects "
                f"{tuple(v.shape)}")
    extra = [k for k in given if k not in expected]
    if extra:
        raise CheckpointError(f"checkpoint has weight {extra[0]!r} that the model config does "
                              f"not use ({len(extra)} unused in all)")
    for k, v in given.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"weight {k!r} contains NaN or infinite values")


# ----------------------------------------------------------------------------- public API
def read_metadata(path) -> dict[str, str]:
    """The string metadata of an own-format .safetensors file ({} for .pt/.pth files).

    Reads the header only: no tensor is loaded."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    return _read_safetensors(path, with_tensors=False)[1]


def load_model(source, config: ModelConfig | None = None, device="cpu") -> DermoSegDiff:
    """Path or in-memory dict -> reference DermoSegDiff in eval mode.

    The returned model carries `.schedule` (diffusion table) and `.preprocessing`; for
    published checkpoints these are the published ones.
    """
    meta: dict = {}
    if isinstance(source, (str, os.PathLike)):
        obj, meta = _read_file(Path(source))
    else:
        obj = source
    sd = extract_state_dict(obj)
    if config is None:
        config = (ModelConfig.from_dict(json.loads(meta["config"])) if "config" in meta
                  else infer_config(sd))
    model = DermoSegDiff(config)
    check_state_dict(model.state_dict(), sd)
    model.load_state_dict(sd, strict=True)
    model.schedule = (Schedule.from_dict(json.loads(meta["schedule"])) if "schedule" in meta
                      else Schedule.published())
    pre = json.loads(meta["preprocessing"]) if "preprocessing" in meta else {}
    model.preprocessing = Preprocessing(**{**{"image_size": config.image_size}, **pre})
    return model.to(device).eval()


def save_model(model: DermoSegDiff, path, schedule: Schedule | None = None,
               extra_metadata: dict | None = None) -> Path:
    """Write weights + config + schedule + preprocessing as one .safetensors file, atomically."""
    from safetensors.torch import save_file
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"own-format checkpoints end in .safetensors, got {path.name}")
    schedule = schedule or getattr(model, "schedule", None) or Schedule.published()
    pre = getattr(model, "preprocessing", None) or Preprocessing(model.config.image_size)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "config": model.config.to_json(), "schedule": json.dumps(schedule.to_dict()),
            "preprocessing": json.dumps(pre.to_dict())}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
