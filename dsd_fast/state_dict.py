"""The strict check every loader runs before load_state_dict: keys, types, shapes, values."""
from __future__ import annotations

import torch

from .errors import CheckpointError


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
