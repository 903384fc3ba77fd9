"""winograd_weight (ops/winograd.py): U = G w G^T of every (output, input) channel kernel,
in the packed layout (ceil(K / 32), 36, C, 32), against two straightforward references:

- exact rational arithmetic (fractions.Fraction, G's thirds and fifteenths exact) rounded
  once to the nearest float32, ties to even: the transform must equal it bit for bit. About
  0.2 % of random float32 kernels' entries are exact ties between two float32s (a numerator
  divisible by 3, 9, 15, 45 or 225), so a float64 G, whose 1/3 and 1/15 are inexact, lands
  those on either side depending on the order the sums run in;
- a per-kernel loop of G @ w @ G^T in float64 (the transform's old definition): within one
  float32 unit in the last place (the ties above), far below the 2e-5 of scale that the
  convolution tests allow.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from dsd_fast.ops import winograd

G_EXACT = [[Fraction(1), 0, 0],
           [Fraction(1, 3), Fraction(1, 3), Fraction(1, 3)],
           [Fraction(-1, 3), Fraction(1, 3), Fraction(-1, 3)],
           [Fraction(-16, 15), Fraction(-8, 15), Fraction(-4, 15)],
           [Fraction(1, 15), Fraction(-2, 15), Fraction(4, 15)],
           [0, 0, Fraction(1)]]


def round_to_float32(x: Fraction) -> tuple[np.float32, bool]:
    """x rounded to the nearest float32, ties to even (float(x) then float32 can round twice),
    and whether x was a tie (exactly halfway between two float32s)."""
    f = np.float32(float(x))
    candidates = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    dist = [abs(Fraction(float(c)) - x) for c in candidates]
    best = min(dist)
    near = [c for c, d in zip(candidates, dist) if d == best]
    return min(near, key=lambda c: int(np.array(c).view(np.int32)) & 1), len(near) > 1


def exact_transform(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(K, C, 3, 3) -> (K, C, 6, 6) float32: G w G^T per kernel in exact arithmetic, rounded
    once; and how many of its entries were ties."""
    k, c = w.shape[:2]
    out = np.zeros((k, c, 6, 6), dtype=np.float32)
    ties = 0
    wf = w.double().numpy()
    for o in range(k):
        for ci in range(c):
            g = [[Fraction(float(wf[o, ci, a, b])) for b in range(3)] for a in range(3)]
            gw = [[sum(G_EXACT[i][a] * g[a][b] for a in range(3)) for b in range(3)]
                  for i in range(6)]
            for i in range(6):
                for j in range(6):
                    out[o, ci, i, j], tie = round_to_float32(sum(gw[i][b] * G_EXACT[j][b]
                                                                 for b in range(3)))
                    ties += tie
    return torch.from_numpy(out), ties


def loop_transform(w: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> (K, C, 6, 6) float32: G @ w @ G^T kernel by kernel in float64."""
    g = winograd.G
    return torch.stack([torch.stack([g @ kern.double() @ g.T for kern in row])
                        for row in w]).float()


def unpack(u: torch.Tensor, k: int) -> torch.Tensor:
    """winograd_weight's (P, 36, C, 32) back to (K, C, 6, 6); checks the padding is zero."""
    p, _, c, _ = u.shape
    assert torch.all(u.permute(0, 3, 2, 1).reshape(p * 32, c, 36)[k:] == 0)
    return u.permute(0, 3, 2, 1).reshape(p * 32, c, 6, 6)[:k]


def random_weight(k, c, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, c, 3, 3, generator=gen) / (9 * c) ** 0.5


def test_g_is_its_integer_rows_over_their_denominators():
    assert torch.equal(winograd.G_NUM / winograd.G_DEN[:, None], winograd.G)
    for i in range(6):
        for a in range(3):
            assert Fraction(float(winograd.G_NUM[i, a])) / int(winograd.G_DEN[i]) == G_EXACT[i][a]


# (K, C): K below, at and beyond the 32-channel panel (zero-padded), odd C
@pytest.mark.parametrize("k,c,seed", [(40, 5, 0), (7, 9, 1), (32, 4, 2)])
def test_transform_is_exact_g_w_gt_rounded_once(k, c, seed):
    w = random_weight(k, c, seed)
    u = winograd.winograd_weight(w)
    assert u.shape == (-(-k // 32), 36, c, 32) and u.dtype == torch.float32 and u.is_contiguous()
    expected, ties = exact_transform(w)
    assert ties > 0                     # the weights exercise the ties (rounded to even)
    got = unpack(u, k)
    wrong = (got != expected).sum().item()
    assert wrong == 0, f"{wrong} of {got.numel()} entries differ from G w G^T rounded once"


@pytest.mark.parametrize("k,c", [(48, 16), (33, 20), (64, 3)])
def test_transform_matches_the_float64_kernel_loop_within_an_ulp(k, c):
    w = random_weight(k, c, seed=k + c)
    got, ref = unpack(winograd.winograd_weight(w), k), loop_transform(w)
    ulp = torch.finfo(torch.float32).eps * ref.abs()          # >= one float32 ulp of ref
    assert torch.all((got - ref).abs() <= ulp)


def test_transform_takes_any_layout_and_dtype():
    w = random_weight(40, 16, seed=4)
    u = winograd.winograd_weight(w)
    assert torch.equal(winograd.winograd_weight(w.contiguous(memory_format=torch.channels_last)), u)
    assert torch.equal(winograd.winograd_weight(w.double()), u)   # float32 values, float64 dtype
    wg = w.clone().requires_grad_(True)
    uw = winograd.winograd_weight(wg)
    assert torch.equal(uw, u) and not uw.requires_grad


def test_kernels_spanning_many_magnitudes_within_an_ulp_of_exact():
    # beyond ~2^16 between a kernel's weights the float64 numerator is no longer exact
    gen = torch.Generator().manual_seed(6)
    w = random_weight(12, 4, seed=6) * 2.0 ** torch.randint(-40, 1, (12, 4, 3, 3), generator=gen)
    expected, _ = exact_transform(w)
    got = unpack(winograd.winograd_weight(w), 12)
    assert torch.all((got - expected).abs() <= torch.finfo(torch.float32).eps * expected.abs())
