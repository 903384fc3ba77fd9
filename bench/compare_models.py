"""The bundled models side by side on the same PH2 validation images, in one run.

    python bench/compare_models.py [--models default medsegdiff] [--time-images 5]

Per model: per-image Dice, thresholded Jaccard (0.65), GED (5 samples against the one
annotation), the error rate in the 10% highest-std pixels against the rest, all on the 20
val images with segment() defaults (DDIM 25, ensemble 5, seed 0, noise keyed by position as
bench/eval_val.py does); then seconds per image with backend="fast" and "reference" on the
first --time-images of them, one image per call (the models alternate, so both see the
same machine state). Models are bundled names or checkpoint paths.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import dsd_fast
from dsd_fast.images import load_mask
from dsd_fast.metrics import score_image, summarise
from dsd_fast.uncertainty import error_rates_by_uncertainty, ged

PH2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ph2"


def accuracy(pipe, paths, gts) -> dict:
    res = pipe.segment(paths, steps=25, ensemble=5, seed=0, batch_size=4,
                       noise_keys=list(range(len(paths))), return_samples=True)
    s = summarise([score_image(r.mask, g) for r, g in zip(res, gts)])
    rates = error_rates_by_uncertainty([r.mask for r in res], gts, [r.std for r in res])
    return {"dice": s["dice_mean"], "dice_std": s["dice_std"],
            "threshold_jaccard": s["threshold_jaccard_mean"],
            "ged": float(np.mean([ged(r.samples, g[None])["ged"] for r, g in zip(res, gts)])),
            "err_top10_std": rates["error_rate_top"], "err_rest": rates["error_rate_rest"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default", "medsegdiff"])
    ap.add_argument("--time-images", type=int, default=5)
    args = ap.parse_args()
    ids = (PH2 / "val.txt").read_text().split()
    paths = [PH2 / "images" / f"{i}.png" for i in ids]
    gts = [load_mask(PH2 / "masks" / f"{i}.png").numpy() for i in ids]
    pipes = {m: dsd_fast.load(m) for m in args.models}
    rows = {m: {"family": p.family.name,
                "parameters_M": sum(q.numel() for q in p.model.parameters()) / 1e6,
                **accuracy(p, paths, gts)} for m, p in pipes.items()}
    for backend in ("fast", "reference"):
        for pipe in pipes.values():                      # warm-up: builds the fast model
            pipe.segment(paths[0], steps=2, ensemble=5, backend=backend)
        times = {m: [] for m in pipes}
        for p in paths[:args.time_images]:
            for m, pipe in pipes.items():
                t0 = time.perf_counter()
                pipe.segment(p, steps=25, ensemble=5, backend=backend)
                times[m].append(time.perf_counter() - t0)
        for m in pipes:
            rows[m][f"s_per_image_{backend}"] = statistics.median(times[m])
    for m, row in rows.items():
        print(json.dumps({"model": m, **row}))
    cols = ("dice", "threshold_jaccard", "ged", "err_top10_std", "s_per_image_fast",
            "s_per_image_reference")
    print(f"{'model':<20}" + "".join(f"{c:>22}" for c in cols))
    for m, row in rows.items():
        print(f"{m:<20}" + "".join(f"{row[c]:>22.3f}" for c in cols))


if __name__ == "__main__":
    main()
