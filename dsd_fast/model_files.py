"""Reading model files as they are: a .safetensors file's tensors and metadata, or a .pt/.pth
file through `torch.load(weights_only=True)` (no arbitrary unpickling). What the contents
are (which family, which config) is checkpoint.py's business, above the families."""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError


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
