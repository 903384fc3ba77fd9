"""Test-time augmentation across an ensemble: member e of each image sees the image under one
of the 8 symmetries of the square (the dihedral group D4), and its sample is mapped back
before the members are fused.

    e mod 8:  0 identity, 1 flip left-right, 2 flip up-down, 3 rotate 90, 4 rotate 180,
              5 rotate 270, 6 transpose, 7 anti-transpose
Lesions have no preferred orientation and the training augmentation (rotations, flips)
shows the networks every orientation, so differently oriented members may err less alike,
at no extra compute (the members run in the same batch as plain ones). Whether that beats
plain members is measured per model (MODEL_CARD.md: for the HAM10000 + PH2 weights it does
not), not assumed; the default is off.
"""
from __future__ import annotations

import torch

SYMMETRIES = 8


def _apply(x: torch.Tensor, k: int, inverse: bool) -> torch.Tensor:
    """Symmetry k of the last two dims of x (square), or its inverse."""
    h, w = -2, -1
    if k == 0:
        return x
    if k == 1:
        return x.flip(w)
    if k == 2:
        return x.flip(h)
    if k in (3, 4, 5):
        turns = k - 2                               # 1, 2, 3 quarter turns
        return torch.rot90(x, -turns if inverse else turns, dims=(h, w))
    if k == 6:
        return x.transpose(h, w)
    return x.flip(h, w).transpose(h, w)             # k == 7: its own inverse too


def member_views(images: torch.Tensor, ensemble: int) -> torch.Tensor:
    """(N, C, S, S) -> (N*E, C, S, S): each image repeated E times, member e under symmetry
    e mod 8 (the same layout as repeat_interleave)."""
    n = images.shape[0]
    views = torch.stack([_apply(images, e % SYMMETRIES, False) for e in range(ensemble)], 1)
    return views.reshape(n * ensemble, *images.shape[1:]).contiguous()


def undo_member_views(samples: torch.Tensor, ensemble: int) -> torch.Tensor:
    """(N*E, ..., S, S) samples of `member_views` inputs -> each mapped back to the image's
    own orientation."""
    x = samples.reshape(-1, ensemble, *samples.shape[1:])
    back = torch.stack([_apply(x[:, e], e % SYMMETRIES, True) for e in range(ensemble)], 1)
    return back.reshape(samples.shape).contiguous()
