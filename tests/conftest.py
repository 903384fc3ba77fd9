"""Shared fixtures, and the small networks tests build (`from conftest import make_model`;
bench/ has its own, throughput_cases.perturbed). Tests run on the CPU and keep to small
configs unless marked slow."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import dsd_fast
from dsd_fast import DermoSegDiff
from dsd_fast.families import find_config, get_family

REPO = Path(__file__).resolve().parents[1]
SHARED_PH2 = REPO.parent / "shared" / "data" / "ph2"


@pytest.fixture(scope="session")
def ph2_dir() -> Path:
    if not (SHARED_PH2 / "images").is_dir():
        pytest.skip(f"PH2 data not found at {SHARED_PH2} (../shared is absent)")
    return SHARED_PH2


def seeded_network(config="tiny", seed: int = 0, **changes) -> torch.nn.Module:
    """The reference network of a config (a name of any family's, or a DermoSegDiff
    ModelConfig), with **changes to its fields (e.g. channels_g=1), built right after
    torch.manual_seed(seed), in eval mode. Its weights are as initialised: the zero-initialised
    output layer makes every output 0 (make_model moves them)."""
    fam, cfg = (find_config(config) if isinstance(config, str)
                else (get_family("dermosegdiff"), config))
    torch.manual_seed(seed)
    return fam.build_reference(dataclasses.replace(cfg, **changes) if changes else cfg).eval()


def channels_pipe(channels: int, seed: int = 0):
    """The pipeline of config tiny_ff taking `channels` image channels (seeded_network:
    weights as initialised), for tests of what goes in rather than of the maps."""
    return dsd_fast.pipeline_from_network(seeded_network("tiny_ff", seed, channels_g=channels))


def perturb_weights(net: torch.nn.Module, scale: float = 0.05,
                    generator: torch.Generator | None = None) -> torch.nn.Module:
    """net with scale * N(0, 1) added to every parameter in place, in eval mode. generator
    None draws from torch's global generator, continuing from whatever built net (so
    torch.manual_seed before the build fixes both)."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)
    return net.eval()


def make_model(config="tiny", seed: int = 0, perturb: float = 0.05, **changes):
    """A small network (seeded_network's config, seed and changes) with every weight (FF-Parser
    gates, GroupNorm affines and the zero-initialised output layer included) moved off its
    initial value by perturb_weights, so tests cannot pass by an identity or zero path. It is
    a plain network: segment() gives it the family's default schedule and preprocessing."""
    return perturb_weights(seeded_network(config, seed, **changes), perturb)


@pytest.fixture
def tiny_model() -> DermoSegDiff:
    return make_model("tiny")


@pytest.fixture
def tiny_ff_model() -> DermoSegDiff:
    return make_model("tiny_ff")
