"""The strict check every loader runs before load_state_dict: keys, types, shapes, values."""
from __future__ import annotations

import torch

from .errors import CheckpointError
from .weight_keys import mismatch_message


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """Strict key, type and shape check. Missing and unused weights are counted and grouped
    (weight_keys.py); a wrong type or shape names the first key that does not fit.
    A float weight stored as integers would be silently truncated by load_state_dict: it
    is refused (integer buffers, e.g. BatchNorm's step counter, stay integers)."""
    missing = [k for k in expected if k not in given]
    unused = [k for k in given if k not in expected]
    if missing or unused:
        raise CheckpointError(mismatch_message(expected, missing, unused))
    for k, v in expected.items():
        if not isinstance(given[k], torch.Tensor):
            raise CheckpointError(f"weight {k!r} is a {type(given[k]).__name__}, not a tensor")
        if v.is_floating_point() and not given[k].is_floating_point():
            raise CheckpointError(f"weight {k!r} has dtype {given[k].dtype}; a floating-point "
                                  "tensor is expected")
        if tuple(given[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"weight {k!r} has shape {tuple(given[k].shape)}, the model config expects "
                f"{tuple(v.shape)}")
    for k, v in given.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"weight {k!r} contains NaN or infinite values")
