"""Deterministic, well-scaled weights from (key, shape) alone.

Used to compare our networks with original code in a scratch folder: the harness there fills
the original network with these weights and stores only its outputs (tests/data/*golden*);
the test fills ours with the same weights and compares. Seeded per key (crc32), so the order
in which a network lists its parameters does not matter.
"""
import zlib

import torch


def deterministic_weights(shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in shapes.items():
        shape = tuple(shape)
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("running_mean"):
            out[key] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            out[key] = torch.randn(shape, generator=gen) / fan_in ** 0.5
        elif key.endswith(".weight"):                  # norm scales
            out[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:                                          # biases
            out[key] = 0.05 * torch.randn(shape, generator=gen)
    return out
