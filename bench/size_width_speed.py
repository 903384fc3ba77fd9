"""Which DermoSegDiff input sizes and widths fit the default model's speed budget.

    python bench/size_width_speed.py [--sizes 48,64,80,96] [--dims 8,16,24] [--images 3]

The default must stay fast: <= 2.5 s per image with segment() defaults (DDIM 25, ensemble 5,
fast path, float32) on this project's 2-core CPU. Speed does not depend on the weights, so
each candidate is the `default` config with another image_size / width (dim_x = dim_g,
divisible by the config's 8 GroupNorm groups) and random weights; seconds per image are the
median of --images timed calls on one PH2 image, the candidates alternating call by call so
all see the same machine state. The bundled default (64 px, width 16, trained weights) runs
beside them as a check that random weights time like trained ones. Accuracy needs a trained
model per candidate: MODEL_CARD.md has the ones trained.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import dsd_fast
from dsd_fast.families.dermosegdiff.config import get_config
from dsd_fast.families.dermosegdiff.reference import DermoSegDiff

BUDGET_S = 2.5
SAMPLE = Path(dsd_fast.__file__).parent / "samples" / "IMD009.png"


def candidate(size: int, dim: int) -> "dsd_fast.Pipeline":
    config = get_config("default").replace(image_size=size, dim_x=dim, dim_g=dim)
    torch.manual_seed(0)
    return dsd_fast.pipeline_from_network(DermoSegDiff(config).eval())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="48,64,80,96")
    ap.add_argument("--dims", default="8,16,24")
    ap.add_argument("--images", type=int, default=3)
    args = ap.parse_args()
    pipes = {f"{s} px, width {d}, random": candidate(s, d)
             for s in map(int, args.sizes.split(",")) for d in map(int, args.dims.split(","))}
    pipes["64 px, width 16, bundled default"] = dsd_fast.load()
    for pipe in pipes.values():                        # warm-up: builds each fast model
        pipe.segment(SAMPLE, steps=2, ensemble=5, backend="fast")
    times = {k: [] for k in pipes}
    for _ in range(args.images):
        for k, pipe in pipes.items():
            t0 = time.perf_counter()
            pipe.segment(SAMPLE, steps=25, ensemble=5, backend="fast")
            times[k].append(time.perf_counter() - t0)
    print(f"torch threads {torch.get_num_threads()}; budget {BUDGET_S} s per image")
    print(f"{'candidate':<34} {'params M':>9} {'s/image':>8}  within budget")
    for k, pipe in pipes.items():
        med = statistics.median(times[k])
        params = sum(p.numel() for p in pipe.model.parameters()) / 1e6
        print(f"{k:<34} {params:>9.2f} {med:>8.2f}  {'yes' if med <= BUDGET_S else 'no'}")


if __name__ == "__main__":
    main()
