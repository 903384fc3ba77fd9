"""Seconds per image of bundled models at their segment() defaults, side by side in one run:
the s/image column of the README's model table.

    python bench/time_models.py [--models default thyroid-ultrasound ...] [--images 5]
        [--threads 2]

Each model segments the first --images images of its own data set's val split (the set is
named in MODEL_TIMING_SETS; the bundled samples for the skin models), one image per call,
after one untimed warm-up call (which builds the fast model); the models alternate image by
image so they see the same machine state. Prints the median and the range per model, and
the setting each ran (the model file's own defaults).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import dsd_fast
from eval_experts import val_items
from eval_sources import DATA

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "dsd_fast" / "samples"
# the data set whose val images time a bundled model (None: the package's PH2 samples)
MODEL_TIMING_SETS = {"default": None, "medsegdiff": None, "thyroid-ultrasound": "ddti",
                     "breast-ultrasound": "busi", "polyp": "kvasir_seg",
                     "fundus-disc-cup": "drishti_gs"}


def images_for(model: str, n: int) -> list[Path]:
    name = MODEL_TIMING_SETS.get(model)
    if name is None:
        return sorted(p for p in SAMPLES.iterdir() if p.suffix in (".png", ".jpg"))[:n]
    # only the pictures (eval_experts' lookup: a set of several classes, Drishti-GS, has a
    # mask file per class, which eval_sources' pairs do not find)
    return [img for _, img in val_items(DATA / name, n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default"])
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipes = {m: dsd_fast.load(m) for m in args.models}
    images = {m: images_for(m, args.images) for m in args.models}
    times: dict[str, list[float]] = {m: [] for m in args.models}
    for m, pipe in pipes.items():
        pipe.segment([images[m][0]])                       # warm-up: builds the fast model
    for k in range(args.images):
        for m, pipe in pipes.items():
            t0 = time.perf_counter()
            pipe.segment([images[m][k % len(images[m])]])
            times[m].append(time.perf_counter() - t0)
    for m, pipe in pipes.items():
        o = pipe.resolve()
        setting = (f"{o.ensemble} members x {o.steps} {o.spacing} steps"
                   + (f", crop {o.crop}" if o.crop not in (None, "full") else ""))
        ts = times[m]
        print(f"{m}: {statistics.median(ts):.2f} s/image (median of {len(ts)}, "
              f"{min(ts):.2f}-{max(ts):.2f}), {setting}, {args.threads} threads")


if __name__ == "__main__":
    main()
