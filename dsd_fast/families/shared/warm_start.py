"""Weights that carry over between configs of one family (warm starts of `dsd-fast train`)."""
from __future__ import annotations

import torch


def image_conv_for_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """The first image convolution's weight (out, in, k, k) for `channels` input channels.

    N -> 1 sums it over the colours, so the gray network computes exactly what the colour
    network computes on a gray image replicated into every channel; 1 -> N spreads it (1/N
    to each colour), the same identity the other way round. Other counts do not carry over.
    """
    have = weight.shape[1]
    if have == channels:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1:
        return weight.expand(-1, channels, -1, -1) / channels
    raise ValueError(f"image channels {have} -> {channels}: only 1 <-> N carry over")
