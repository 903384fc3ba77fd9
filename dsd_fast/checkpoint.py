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
from .errors import CheckpointError
from .families import FAMILIES, ModelFamily, detect_family, family_of_network, get_family
from .io import atomic_write
from .model_files import _read_safetensors, read_file, read_metadata  # noqa: F401 (re-exported)
from .preprocess import Preprocessing
from .segmenter import Segmenter
from .state_dict import check_state_dict

FORMAT_NAME = "dsd_fast"
FORMAT_VERSION = "2"          # 2 adds "family"; version-1 files are all DermoSegDiff
LEGACY_FAMILY = "dermosegdiff"


# ----------------------------------------------------------------------------- families
def _family_for_config(config) -> ModelFamily | None:
    for fam in FAMILIES.values():
        if isinstance(config, fam.config_class):
            return fam
    return None


def _is_optimizer_state(obj) -> bool:
    """torch's optimizer.state_dict(): {'state': {...}, 'param_groups': [...]} (the official
    MedSegDiff code writes one beside every checkpoint, as optsavedmodel*.pt)."""
    return isinstance(obj, dict) and isinstance(obj.get("state"), dict) \
        and isinstance(obj.get("param_groups"), list)


def _no_family_error(obj) -> CheckpointError:
    if _is_optimizer_state(obj):
        return CheckpointError(
            "this is optimizer state (keys 'state' and 'param_groups'), not a model: it holds "
            "no weights. The official MedSegDiff code writes it as optsavedmodel*.pt; use "
            "the savedmodel*.pt or emasavedmodel*.pt beside it")
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
        if sd is None and _is_optimizer_state(obj):
            raise _no_family_error(obj)
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
    elif isinstance(source, tuple):              # (object, metadata) already read
        obj, meta = source
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


def load_segmenter(source, device="cpu", family=None, config=None, **settings):
    """Path or in-memory dict -> its family's segmenter (a Pipeline for mask-diffusion
    families): the network(s) with the schedule, preprocessing and sampler settings the file
    stores. `family`, `config` and `settings` are for files that do not say what they are."""
    meta: dict = {}
    if isinstance(source, (str, os.PathLike)):
        obj, meta = read_file(source)
        name = meta.get("family")
        if name is not None and family is None and config is None and not settings:
            try:
                own = get_family(name).segmenter_from_file(obj, meta, device)
            except KeyError as e:
                raise CheckpointError(f"{source}: {e.args[0]}") from None
            if own is not None:
                return own
    fam, net, schedule, pre = load_parts(source if not meta else (obj, meta), config, family,
                                         device, **settings)
    return fam.segmenter(net, schedule, pre, meta)


# ----------------------------------------------------------------------------- writing
def save_model(model, path, schedule: Schedule | None = None,
               preprocessing: Preprocessing | None = None,
               extra_metadata: dict | None = None) -> Path:
    """Write a segmenter (a Pipeline, a DiffSegPipeline: every network it holds, with its
    family, config, schedule, preprocessing and sampler settings) or a bare reference
    network as one .safetensors file, atomically. `schedule` / `preprocessing` replace the
    segmenter's own (or, for a bare network, the family's defaults)."""
    from safetensors.torch import save as safetensors_bytes
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"own-format checkpoints end in .safetensors, got {path.name}")
    if isinstance(model, torch.nn.Module):
        family = family_of_network(model)
        config = family.config_of(model)
        model = family.segmenter(model, family.default_schedule(config),
                                 family.preprocessing(config))
    if not isinstance(model, Segmenter):
        raise TypeError(f"save_model takes a segmenter or a network, got "
                        f"{type(model).__name__}")
    tensors, meta = model.file_contents()
    if schedule is not None:
        meta["schedule"] = json.dumps(schedule.to_dict())
    if preprocessing is not None:
        meta["preprocessing"] = json.dumps(preprocessing.to_dict())
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **meta}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = safetensors_bytes(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(data))
