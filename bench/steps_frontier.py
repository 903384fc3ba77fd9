"""Dice against DDIM steps, members, time-grid spacing and test-time augmentation, on PH2 val and
HAM10000 val (or --sources): the quality-speed frontier of a model (MODEL_CARD.md).

    python bench/steps_frontier.py --checkpoint PATH [--sources ph2,ham10000] [--limit N]
        [--ham-limit 100] [--steps 1,2,3,5,10,25] [--spacings leading,trailing]
        [--tta-steps 25] [--ensemble 5[,10,25]] [--out FILE.json]

Every row runs segment() on the same images with the same noise (seed 0, noise keyed by the
image's position, as bench/eval_sources.py) and differs only in the row's setting; the time
per image is the row's wall time over its images, one process, so rows compare as ratios.
--tta-steps adds rows with tta=True (members see flipped/rotated views; same compute) at
those step counts, beside the plain rows at the same steps.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dsd_fast import load
from dsd_fast.images import load_mask
from dsd_fast.metrics import dice
from eval_sources import val_items


def run_row(pipe, items, masks, **kw) -> dict:
    t0 = time.perf_counter()
    per_source: dict[str, list[float]] = {}
    for pos, (source, _, img, _) in enumerate(items):
        res = pipe.segment([img], seed=0, noise_keys=[pos], **kw)[0]
        per_source.setdefault(source, []).append(float(dice(res.mask, masks[pos])))
    secs = (time.perf_counter() - t0) / len(items)
    row = dict(kw)
    for source, d in per_source.items():
        row[source] = float(np.mean(d))
        row[f"{source}_below_0.5"] = int((np.array(d) < 0.5).sum())
    row["seconds_per_image"] = secs
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--sources", default="ph2,ham10000",
                    help="comma-separated sets of ../shared/data (eval_sources.py)")
    ap.add_argument("--limit", type=int, default=None, help="first N val ids of each set")
    ap.add_argument("--ham-limit", type=int, default=100)
    ap.add_argument("--steps", default="1,2,3,5,10,25")
    ap.add_argument("--spacings", default="leading,trailing")
    ap.add_argument("--tta-steps", default="25")
    ap.add_argument("--ensemble", default="5",
                    help="members per image; a comma-separated list makes a steps x members grid")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sources = args.sources.split(",")
    items = val_items(args.ham_limit, sources=sources, limit=args.limit)
    masks = [load_mask(m).numpy() for _, _, _, m in items]
    pipe = load(args.checkpoint)
    rows = []
    ensembles = [int(e) for e in args.ensemble.split(",")]
    settings = [dict(steps=int(s), spacing=sp, tta=False, ensemble=e) for e in ensembles
                for s in args.steps.split(",") for sp in args.spacings.split(",")]
    settings += [dict(steps=int(s), spacing="leading", tta=True, ensemble=ensembles[0])
                 for s in args.tta_steps.split(",") if s]
    for kw in settings:
        row = run_row(pipe, items, masks, **kw)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint,
                                                  "sources": sources, "limit": args.limit,
                                                  "ham_limit": args.ham_limit, "rows": rows}))
    print("| steps | members | spacing | tta | " + " | ".join(f"{s} val" for s in sources)
          + " | s/image |")
    print("|---" * (len(sources) + 5) + "|")
    for r in rows:
        print(f"| {r['steps']} | {r['ensemble']} | {r['spacing']} | "
              f"{'yes' if r['tta'] else 'no'} | "
              + " | ".join(f"{r.get(s, float('nan')):.3f}" for s in sources)
              + f" | {r['seconds_per_image']:.2f} |")


if __name__ == "__main__":
    main()
