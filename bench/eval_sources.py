"""A model on several validation sets at once (PH2 val and HAM10000 val by default; any of
../shared/data's sets with --sources): the bundled models' figures of MODEL_CARD.md.

    python bench/eval_sources.py --checkpoint PATH [--sources ph2,ham10000] [--limit N]
        [--ham-limit N] [--steps 25]
        [--ensemble 5] [--spacing leading|trailing] [--tta]
        [--crop zoom [--zoom-passes 2|3] [--zoom-outside pass1|background] [--zoom-boxes N]]
        [--seed S] [--shard K/N]
        [--out FILE.json]
        [--save-prob DIR]
    python bench/eval_sources.py --merge A0.json A1.json [--versus B0.json B1.json]

segment() defaults (the model's own sampler setting, else DDIM 25 x 5; seed 0 or --seed; noise keyed
by list position so runs compare), scored at each image's original resolution. Prints
per-source mean per-image Dice, thresholded Jaccard, pooled Dice, the count of images below
0.5 and the worst five, and the pooled mean over all images. --sources names the sets
(folders of ../shared/data with images/, masks/ and val.txt: ph2, ham10000, ddti, busi,
kvasir_seg, cvc_clinicdb); --limit takes the first N ids of each set's val.txt and --ham-limit those of HAM10000 (a fixed
subset; the split's order is the file's); --shard K/N evaluates every N-th image from
the K-th, so N processes can share the work (merge their --out files with --merge);
--versus compares two models' files image by image (per source: mean paired difference of
Dice, its standard error, wins and losses). --save-prob keeps each image's probability map
(original size, uint16 = round(p * 65535), DIR/SOURCE_ID.npz) for offline studies of
post-processing (bench/postprocess_study.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dsd_fast import load
from dsd_fast.images import load_mask
from dsd_fast.metrics import score_image
from dsd_fast.options import ZOOM_BOXES, ZOOM_OUTSIDE, ZOOM_PASSES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


SKIN = ("ph2", "ham10000")


def val_items(ham_limit=None, ph2_limit=None, data=DATA, sources=SKIN, limit=None):
    """(source, id, image path, mask path) of the val splits under `data` (../shared/data by
    default; bench/pack_data.py writes a smaller copy with the same layout): the first
    `limit` ids of each source's val.txt (ham_limit / ph2_limit for those two sets)."""
    items = []
    limits = {"ph2": ph2_limit, "ham10000": ham_limit}
    for source in sources:
        limit_here = limits.get(source) if limits.get(source) is not None else limit
        root = Path(data) / source
        if not (root / "val.txt").is_file():
            raise SystemExit(f"{root}: no val.txt (a set has images/, masks/ and val.txt)")
        ids = (root / "val.txt").read_text().split()[:limit_here]
        for i in ids:
            img = next(p for p in (root / "images").glob(f"{i}.*"))
            mask = next(p for p in (root / "masks").glob(f"{i}.*"))
            items.append((source, i, img, mask))
    return items


def summary(rows) -> dict:
    out = {}
    for source in sorted({r["source"] for r in rows}) + ["all"]:
        rs = [r for r in rows if source in ("all", r["source"])]
        d = np.array([r["dice"] for r in rs])
        out[source] = {"images": len(rs), "dice_mean": float(d.mean()),
                       "dice_median": float(np.median(d)),
                       "threshold_jaccard_mean": float(np.mean([r["tj"] for r in rs])),
                       "below_0.5": int((d < 0.5).sum()),
                       "worst": sorted(((r["dice"], r["id"]) for r in rs))[:5]}
    return out


def paired(rows, other) -> dict:
    """Per-image Dice of `rows` minus `other` on the images both scored, per source: a
    difference smaller than about two standard errors is not a win."""
    theirs = {(r["source"], r["id"]): r["dice"] for r in other}
    out = {}
    for source in sorted({r["source"] for r in rows}) + ["all"]:
        d = np.array([r["dice"] - theirs[(r["source"], r["id"])] for r in rows
                      if source in ("all", r["source"]) and (r["source"], r["id"]) in theirs])
        out[source] = {"images": len(d), "mean_difference": float(d.mean()),
                       "standard_error": float(d.std(ddof=1) / np.sqrt(len(d))),
                       "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--sources", default=",".join(SKIN),
                    help="comma-separated sets of ../shared/data (default: ph2,ham10000)")
    ap.add_argument("--limit", type=int, default=None, help="first N val ids of each set")
    ap.add_argument("--ham-limit", type=int, default=None)
    # None: segment()'s defaults (the model's own sampler setting, options.resolve)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--ensemble", type=int, default=None)
    ap.add_argument("--spacing", choices=("leading", "trailing"), default=None)
    ap.add_argument("--tta", action="store_true", help="members see flipped/rotated views")
    ap.add_argument("--crop", choices=("full", "zoom"), default=None,
                    help="zoom: a second pass on the box around the first's object")
    ap.add_argument("--zoom-passes", type=int, choices=ZOOM_PASSES, default=None,
                    help="with --crop zoom: segment()'s zoom_passes (default: the file's own)")
    ap.add_argument("--zoom-outside", choices=ZOOM_OUTSIDE, default=None,
                    help="with --crop zoom: segment()'s zoom_outside (default: the file's own)")
    ap.add_argument("--zoom-boxes", type=int, choices=ZOOM_BOXES, default=None,
                    help="with --crop zoom: segment()'s zoom_boxes (default: the file's own)")
    ap.add_argument("--seed", type=int, default=0, help="segment()'s seed (default 0)")
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--out", default=None)
    ap.add_argument("--save-prob", default=None, help="folder for the probability maps")
    ap.add_argument("--merge", nargs="*", default=None, help="JSON files of shards to merge")
    ap.add_argument("--versus", nargs="*", default=None,
                    help="another model's shard files: paired differences against --merge's")
    args = ap.parse_args()
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(Path(f).read_text())["rows"]]
        if args.versus:
            other = [r for f in args.versus for r in json.loads(Path(f).read_text())["rows"]]
            print(json.dumps(paired(rows, other), indent=1))
        else:
            print(json.dumps(summary(rows), indent=1))
        return
    k, n = (int(v) for v in args.shard.split("/"))
    items = val_items(args.ham_limit, sources=args.sources.split(","), limit=args.limit)
    keyed = list(enumerate(items))[k::n]
    pipe = load(args.checkpoint)
    args.steps, args.ensemble, args.spacing = pipe.sampler_settings(
        args.steps, args.ensemble, args.spacing)
    if args.save_prob:
        Path(args.save_prob).mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.perf_counter()
    for pos, (source, i, img, mask) in keyed:
        res = pipe.segment([img], steps=args.steps, ensemble=args.ensemble, seed=args.seed,
                           noise_keys=[pos], spacing=args.spacing, tta=args.tta,
                           crop=args.crop, zoom_passes=args.zoom_passes,
                           zoom_outside=args.zoom_outside, zoom_boxes=args.zoom_boxes)[0]
        s = score_image(res.mask, load_mask(mask).numpy())
        if args.save_prob:
            np.savez_compressed(Path(args.save_prob) / f"{source}_{i}.npz",
                                p=np.round(res.probability * 65535).astype(np.uint16))
        rows.append({"source": source, "id": i, "dice": s["dice"],
                     "tj": s["threshold_jaccard"]})
    secs = (time.perf_counter() - t0) / max(len(rows), 1)
    result = {"checkpoint": args.checkpoint, "steps": args.steps, "ensemble": args.ensemble,
              "spacing": args.spacing, "tta": args.tta, "crop": args.crop,
              "zoom_passes": args.zoom_passes, "zoom_outside": args.zoom_outside,
              "zoom_boxes": args.zoom_boxes, "seed": args.seed, "seconds_per_image": secs,
              "rows": rows, "summary": summary(rows)}
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
