"""Shared fixtures. Tests run on the CPU and keep to small configs unless marked slow."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsd_fast import DermoSegDiff, get_config

REPO = Path(__file__).resolve().parents[1]
SHARED_PH2 = REPO.parent / "shared" / "data" / "ph2"


@pytest.fixture(scope="session")
def ph2_dir() -> Path:
    if not (SHARED_PH2 / "images").is_dir():
        pytest.skip(f"PH2 data not found at {SHARED_PH2} (../shared is absent)")
    return SHARED_PH2


def make_model(name="tiny", seed: int = 0, perturb: float = 0.05) -> DermoSegDiff:
    """A small model (a config name or a ModelConfig) with every weight (FF-Parser gates and
    GroupNorm affines included) moved off its initial value, so tests cannot pass by an
    identity or zero path. It is a plain network: segment() gives it the family's default
    schedule and preprocessing."""
    torch.manual_seed(seed)
    model = DermoSegDiff(get_config(name) if isinstance(name, str) else name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * perturb)
    return model.eval()


@pytest.fixture
def tiny_model() -> DermoSegDiff:
    return make_model("tiny")


@pytest.fixture
def tiny_ff_model() -> DermoSegDiff:
    return make_model("tiny_ff")
