"""Reading and writing model files, for every family.

Accepted by `load_model` / `dsd_fast.load`:
  * this project's own format: a .safetensors file whose metadata holds the family, the
    model config, the diffusion schedule and the preprocessing as JSON;
  * the original code's files of any registered family (for DermoSegDiff: a published
    training checkpoint, whose EMA weights are used, or a bare state dict; .pt/.pth), or an
    in-memory dict of the same. The family is recognised by its keys, the config inferred
    from tensor shapes unless given.
.pt/.pth files are read with `torch.load(weights_only=True)`: no arbitrary unpickling.
Loading is strict: every weight in the file is used and every parameter is filled, or the
error names the first key that does not fit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .diffusion import Schedule
from .families import FAMILIES, ModelFamily, detect_family, family_of_network, get_family
from .io import atomic_write
from .preprocess import Preprocessing

FORMAT_NAME = "dsd_fast"
FORMAT_VERSION = "2"          # 2 adds "family"; version-1 files are all DermoSegDiff
LEGACY_FAMILY = "dermosegdiff"


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


def read_file(path) -> tuple[dict, dict]:
    """-> (raw object, metadata). Metadata is empty for .pt/.pth files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path, with_tensors=True)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]   # torch's run long
        raise CheckpointError(
            f"{path}: could not be read as a weights-only torch checkpoint ({why}). Only "
            "tensors, numbers and dicts are accepted; arbitrary pickled objects are refused."
        ) from None
    return obj, {}


def read_metadata(path) -> dict[str, str]:
    """The string metadata of an own-format .safetensors file ({} for .pt/.pth files).
    Reads the header only: no tensor is loaded."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    return _read_safetensors(path, with_tensors=False)[1]


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """Strict key, type and shape check; the error names the first key that does not fit.
    A float weight stored as integers would be silently truncated by load_state_dict: it
    is refused (integer buffers, e.g. BatchNorm's step counter, stay integers)."""
    for k, v in expected.items():
        if k not in given:
            raise CheckpointError(f"checkpoint lacks weight {k!r} (expected shape "
                                  f"{tuple(v.shape)}); it does not match the model config")
        if not isinstance(given[k], torch.Tensor):
            raise CheckpointError(f"weight {k!r} is a {type(given[k]).__name__}, not a tensor")
        if v.is_floating_point() and not given[k].is_floating_point():
            raise CheckpointError(f"weight {k!r} has dtype {given[k].dtype}; a floating-point "
                                  "tensor is expected")
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


# ----------------------------------------------------------------------------- families
def _family_for_config(config) -> ModelFamily | None:
    for fam in FAMILIES.values():
        if isinstance(config, fam.config_class):
            return fam
    return None


def _no_family_error(obj) -> CheckpointError:
    tried = "; ".join(f"{f.name} (keys like {', '.join(repr(k) for k in f.signature_keys[:2])})"
                      for f in FAMILIES.values())
    keys = sorted(obj)[:8] if isinstance(obj, dict) else []
    return CheckpointError(
        f"no model family recognises these weights. Tried: {tried}. The file's top-level "
        f"keys begin {keys}. Pass family=... (and config=...) if you know what it is.")


def _resolve(obj, meta: dict, family, config, settings: dict):
    """-> (family, state dict, config, schedule, preprocessing) of a loaded file object."""
    if isinstance(family, str):
        family = get_family(family)
    if "config" in meta:                                   # own format
        family = family or get_family(meta.get("family", LEGACY_FAMILY))
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        try:
            config = config or family.config_class.from_dict(json.loads(meta["config"]))
            schedule = (Schedule.from_dict(json.loads(meta["schedule"])) if "schedule" in meta
                        else family.default_schedule(config))
            pre = family.preprocessing(config)
            if "preprocessing" in meta:
                pre = Preprocessing(**{**pre.to_dict(), **json.loads(meta["preprocessing"])})
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            # json.JSONDecodeError is a ValueError; a field of the wrong type a TypeError
            raise CheckpointError(f"the file's metadata is not valid: {e}") from None
        return family, sd, config, schedule, pre
    family = family or (_family_for_config(config) if config is not None else None)
    if family is None:
        found = detect_family(obj)
        if found is None:
            raise _no_family_error(obj)
        family, sd = found
    else:
        sd = family.state_dict_from(obj)
        if sd is None:
            raise CheckpointError(
                f"no {family.title} weights found: expected a state dict or a training "
                f"checkpoint of the original code; top-level keys were "
                f"{sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__}")
    if config is None:
        try:
            stored = family.settings_from(obj)
            clash = [f"{k}={v!r}, not {settings[k]!r}" for k, v in stored.items()
                     if k in settings and settings[k] != v]
            if clash:
                raise ValueError(f"the file itself says {'; '.join(clash)}")
            config = family.infer_config(sd, **{**stored, **settings})
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    return family, sd, config, family.schedule_from(obj, config), family.preprocessing(config)


def load_parts(source, config=None, family=None, device="cpu", **settings):
    """Path or in-memory dict -> (family, reference network in eval mode, schedule,
    preprocessing). `settings` go to the family's config inference (what shapes cannot tell)."""
    meta: dict = {}
    if isinstance(source, (str, os.PathLike)):
        obj, meta = read_file(source)
    else:
        obj = source
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of tensors, got {type(obj).__name__}")
    family, sd, config, schedule, pre = _resolve(obj, meta, family, config, settings)
    net = family.build_reference(config)
    check_state_dict(net.state_dict(), sd)
    net.load_state_dict(sd, strict=True)
    return family, net.to(device).eval(), schedule, pre


def load_model(source, config=None, device="cpu", family=None, **settings) -> torch.nn.Module:
    """Path or in-memory dict -> the family's reference network, in eval mode.

    Only the network: the schedule and preprocessing a file stores are kept by
    `dsd_fast.load(path)`, which returns a Pipeline. `segment(images, model=net)` uses the
    family's defaults, which are what every file this project writes stores today.
    """
    return load_parts(source, config, family, device, **settings)[1]


def load_diffseg_pair(path, device="cpu"):
    """An own-format DiffSeg file (both networks, keys `have.*` and `no.*`) -> a
    DiffSegPipeline."""
    from .families.diffseg import DIFFSEG
    from .families.diffseg.pipeline import DiffSegPipeline
    obj, meta = read_file(path)
    try:
        config = DIFFSEG.config_class.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: the file's metadata is not valid: {e}") from None
    nets = []
    for part in ("have", "no"):
        sd = {k[len(part) + 1:]: v for k, v in obj.items() if k.startswith(part + ".")}
        net = DIFFSEG.build_reference(config)
        check_state_dict(net.state_dict(), sd)
        net.load_state_dict(sd, strict=True)
        nets.append(net.to(device).eval())
    return DiffSegPipeline(*nets, crop=meta.get("crop", "full"))


# ----------------------------------------------------------------------------- writing
def save_model(model, path, schedule: Schedule | None = None,
               preprocessing: Preprocessing | None = None,
               extra_metadata: dict | None = None) -> Path:
    """Write weights + family + config + schedule + preprocessing as one .safetensors file,
    atomically. `model` is a reference network, a Pipeline (whose schedule and
    preprocessing are used unless given) or a DiffSegPipeline (both networks)."""
    from safetensors.torch import save as safetensors_bytes
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"own-format checkpoints end in .safetensors, got {path.name}")
    if hasattr(model, "have") and hasattr(model, "no"):              # a DiffSeg pair
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "family": "diffseg",
                "config": model.config.to_json(), "crop": model.crop}
        for k, v in (extra_metadata or {}).items():
            meta[k] = v if isinstance(v, str) else json.dumps(v)
        tensors = {f"{part}.{k}": v.detach().cpu().contiguous()
                   for part in ("have", "no") for k, v in getattr(model, part).state_dict().items()}
        data = safetensors_bytes(tensors, metadata=meta)
        return atomic_write(path, lambda f: f.write(data))
    net = getattr(model, "model", model)            # a Pipeline holds its network as .model
    family = family_of_network(net)
    config = family.config_of(net)
    schedule = schedule or getattr(model, "schedule", None) or family.default_schedule(config)
    pre = preprocessing or getattr(model, "preprocessing", None) or family.preprocessing(config)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "family": family.name,
            "config": config.to_json(), "schedule": json.dumps(schedule.to_dict()),
            "preprocessing": json.dumps(pre.to_dict())}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    data = safetensors_bytes(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))
