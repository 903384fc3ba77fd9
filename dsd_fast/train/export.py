"""A run's EMA weights at any moment, as a model file.

best.safetensors holds the EMA at the best training-time validation, and that check is
small (a few dozen val images at a cheap setting): on the polyp and BUSI runs it picked
worse weights than a full evaluation did (MODEL_CARD.md). `export_ema` writes the EMA that
RUN/last.pt holds now, so any step the run reached can be evaluated and bundled:

    python bench/export_ema.py RUN OUT.safetensors
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import load_segmenter, save_model

# What a run writes into best.safetensors beyond the network and its pipeline, and that
# belongs to the weights whatever their step: the class names of a several-class run.
CARRIED = ("classes", "classes_nested")


def _template(run_dir: Path, state: dict) -> Path:
    """The model file whose pipeline (schedule, preprocessing, classes) the export takes:
    RUN/best.safetensors, or, for a run stopped before its first validation wrote one, the
    file it was warm-started from (--init-from, kept in last.pt's options)."""
    best = run_dir / "best.safetensors"
    if best.exists():
        return best
    init_from = json.loads(state.get("options") or "{}").get("init_from")
    if init_from and Path(init_from).exists():
        return Path(init_from)
    raise FileNotFoundError(f"{best} does not exist and the run names no --init-from file "
                            "that does: export_ema takes the model's pipeline from one of them")


def export_ema(run_dir, out) -> Path:
    """RUN/last.pt's EMA weights -> `out` (.safetensors), with the family, config, schedule,
    preprocessing and class names (CARRIED) of the run's model file (`_template`) and
    metadata "step" = last.pt's step. A config other than the run's is an error."""
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if not last.exists():
        raise FileNotFoundError(f"{last} does not exist: export_ema needs the folder of a "
                                "dsd-fast train run")
    state = torch.load(last, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"ema", "step"} <= set(state):
        raise ValueError(f"{last} is not a training checkpoint of dsd-fast train")
    template = _template(run_dir, state)
    pipe = load_segmenter(template)
    if "config" in state and pipe.config.to_json() != state["config"]:
        raise ValueError(f"{template} has config {pipe.config.to_json()}, the run "
                         f"{state['config']}")
    pipe.model.load_state_dict(state["ema"])
    _, meta = pipe.file_contents()              # the class names as every file writes them
    carried = {k: meta[k] for k in CARRIED if k in meta}
    return save_model(pipe.model, out, pipe.schedule, pipe.preprocessing,
                      extra_metadata={"step": int(state["step"]), **carried})
