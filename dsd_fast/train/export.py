"""A run's EMA weights at any moment, as a model file.

best.safetensors holds the EMA at the best training-time validation, and that check is
small (a few dozen val images at a cheap setting): on the polyp and BUSI runs it picked
worse weights than a full evaluation did (MODEL_CARD.md). `export_ema` writes the EMA that
RUN/last.pt holds now, so any step the run reached can be evaluated and bundled:

    python bench/export_ema.py RUN OUT.safetensors
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_model, load_segmenter, read_metadata, save_model

# What a run writes into best.safetensors beyond the network and its pipeline, and that
# belongs to the weights whatever their step: the class names of a several-class run.
CARRIED = ("classes", "classes_nested")


def export_ema(run_dir, out) -> Path:
    """RUN/last.pt's EMA weights -> `out` (.safetensors), with the family, config, schedule,
    preprocessing and class names (CARRIED) of RUN/best.safetensors and metadata "step" =
    last.pt's step."""
    run_dir = Path(run_dir)
    last, best = run_dir / "last.pt", run_dir / "best.safetensors"
    for f in (last, best):
        if not f.exists():
            raise FileNotFoundError(f"{f} does not exist: export_ema needs a run folder with "
                                    "last.pt and best.safetensors (a run that validated once)")
    state = torch.load(last, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"ema", "step"} <= set(state):
        raise ValueError(f"{last} is not a training checkpoint of dsd-fast train")
    pipe = load_segmenter(best)
    network = load_model(best)
    network.load_state_dict(state["ema"])          # strict: a config mismatch is an error
    meta = read_metadata(best)
    carried = {k: meta[k] for k in CARRIED if k in meta}
    return save_model(network, out, pipe.schedule, pipe.preprocessing,
                      extra_metadata={"step": int(state["step"]), **carried})
