"""Validation figures for a model on the PH2 val split (the MODEL_CARD.md tables).

    python bench/eval_val.py [--checkpoint PATH] [--grid steps|ensemble|fusion|all] [--out FILE]

Scores at each image's original (half-size PNG) resolution, per-image mean Dice / IoU /
thresholded Jaccard, and pooled Dice, for:
  steps:    DDIM 5, 10, 25, 50 and the published 250-step DDPM (ensemble 5)
  ensemble: 1, 3, 5 (DDIM 25)
  fusion:   mean vs STAPLE vs mean + DenseCRF (DiffSeg), plus GED (samples vs the one
            annotation) and how well the ensemble std predicts errors (DDIM 25, ensemble 5)
Seed 0 throughout; the same images and noise for every row of a grid.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dsd_fast import load, segment
from dsd_fast.images import load_mask
from dsd_fast.metrics import score_image, summarise
from dsd_fast.uncertainty import error_rates_by_uncertainty, ged

ROOT = Path(__file__).resolve().parents[1]
PH2 = ROOT.parent / "shared" / "data" / "ph2"


def val_set(limit=None):
    ids = (PH2 / "val.txt").read_text().split()[:limit]
    return ids, [PH2 / "images" / f"{i}.png" for i in ids], \
        [load_mask(PH2 / "masks" / f"{i}.png").numpy() for i in ids]


def score(results, gts) -> dict:
    s = summarise([score_image(r.mask, g) for r, g in zip(results, gts)])
    return {k: s[k] for k in ("dice_mean", "dice_std", "iou_mean", "threshold_jaccard_mean",
                              "pooled_dice")}


def run(model, paths, gts, label, **kw) -> dict:
    t0 = time.perf_counter()
    # Noise keyed by list position, as segment() did before 0.2, so the figures in
    # MODEL_CARD.md reproduce exactly (segment() keys by image content by default now).
    res = segment(paths, model=model, seed=0, batch_size=4, noise_keys=list(range(len(paths))),
                  **kw)
    row = {"setting": label, **score(res, gts), "seconds_per_image": (time.perf_counter() - t0) / len(paths)}
    print(json.dumps(row), flush=True)
    return row, res


def uncertainty_rows(res, gts) -> dict:
    """GED per image (samples vs the annotation), and error rate in the 10% most uncertain
    pixels (by ensemble std) against the rest."""
    geds = [ged(r.samples, g[None])["ged"] for r, g in zip(res, gts)]
    rates = error_rates_by_uncertainty([r.mask for r in res], gts, [r.std for r in res])
    return {"ged_mean": float(np.mean(geds)), "error_rate_top10pct_std": rates["error_rate_top"],
            "error_rate_rest": rates["error_rate_rest"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default=None, help="default: the bundled model")
    p.add_argument("--grid", default="all", choices=["steps", "ensemble", "fusion", "all"])
    p.add_argument("--limit", type=int, default=None, help="first N val images only")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    model = load(args.checkpoint)                    # None: the bundled default
    ids, paths, gts = val_set(args.limit)
    rows = []
    if args.grid in ("steps", "all"):
        for steps in (5, 10, 25, 50):
            rows.append(run(model, paths, gts, f"DDIM {steps}, ensemble 5", steps=steps, ensemble=5)[0])
        rows.append(run(model, paths, gts, "DDPM 250, ensemble 5", sampler="ddpm", ensemble=5)[0])
    if args.grid in ("ensemble", "all"):
        for e in (1, 3, 5):
            rows.append(run(model, paths, gts, f"DDIM 25, ensemble {e}", steps=25, ensemble=e)[0])
    if args.grid in ("fusion", "all"):
        row, res = run(model, paths, gts, "DDIM 25, ensemble 5, mean", steps=25, ensemble=5,
                       return_samples=True)
        row.update(uncertainty_rows(res, gts))
        print(json.dumps(row), flush=True)
        rows.append(row)
        rows.append(run(model, paths, gts, "DDIM 25, ensemble 5, STAPLE", steps=25, ensemble=5,
                        fusion="staple")[0])
        try:
            rows.append(run(model, paths, gts, "DDIM 25, ensemble 5, mean + CRF", steps=25,
                            ensemble=5, refine="crf")[0])
        except ImportError as e:
            print(f"CRF rows skipped: {e}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
