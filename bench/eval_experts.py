"""A several-class model against several annotators (Drishti-GS: 4 experts' optic disc and
cup maps): per-class Dice against the majority, and how the ensemble's probability map
compares with the experts' agreement map, against a single sample (MODEL_CARD.md).

    python bench/eval_experts.py --checkpoint PATH [--data ../shared/data/drishti_gs]
        [--ensemble 25] [--steps S] [--spacing trailing] [--crop zoom]
        [--zoom-outside pass1|background] [--zoom-passes 2|3] [--zoom-boxes N] [--tta]
        [--seed S] [--split val|train] [--limit N] [--out FILE.json] [--figure FILE.png]
    python bench/eval_experts.py --checkpoint PATH --crop zoom --steps 3,5 --ensemble 10,25
        --spacing trailing --frontier FRONTIER.json

With --frontier, a grid of steps x members (comma lists): per setting the per-class Dice
and the seconds per image of segment(), written in bench/steps_frontier.py's --out format
(a set per class) for bench/bundle_model.py --frontier.

Per image, with segment() at the model's defaults (or --steps/--ensemble), seed 0 (or
--seed: a zoomed model's box depends on its first pass's noise), noise keyed by the image's
position:
- Dice per class of the model's regions against the experts' majority (map > 127),
- the experts' agreement map a = map / 255 (the fraction of the 4 experts who marked the
  pixel: 0, 1/4, ..., 1), compared inside the box around the experts' disc enlarged by half
  its size on each side (the whole image is mostly background both agree on, which would
  make every model look calibrated):
  - mean absolute difference |p - a| of the ensemble's probability p, and of one sample's
    (ensemble=1, the same first member's noise) for comparison;
  - expected calibration error: pixels binned by p (10 equal bins), per bin |mean a - mean
    p|, weighted by the bin's share of pixels; a reliability table (mean p, mean a per bin).
A model whose ensemble spread matches the experts' disagreement has a lower MAD and ECE
than its single sample; a model that is only sharp has about the same.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dsd_fast import load
from dsd_fast.metrics import dice
from dsd_fast.options import ZOOM_BOXES, ZOOM_OUTSIDE, ZOOM_PASSES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "drishti_gs"
BINS = 10


def experts_box(disc: np.ndarray, margin: float = 0.5) -> tuple[slice, slice]:
    """The box around the experts' disc (any expert), enlarged by `margin` of its size on
    each side and clipped to the image: where the comparison is made."""
    ys, xs = np.nonzero(disc > 0)
    if len(ys) == 0:
        return slice(None), slice(None)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    y0 = max(0, int(ys.min() - margin * h))
    y1 = min(disc.shape[0], int(ys.max() + margin * h) + 1)
    x0 = max(0, int(xs.min() - margin * w))
    x1 = min(disc.shape[1], int(xs.max() + margin * w) + 1)
    return slice(y0, y1), slice(x0, x1)


def calibration(p: np.ndarray, a: np.ndarray, bins: int = BINS) -> dict:
    """Expected calibration error of probabilities `p` against agreement fractions `a`
    (same shape), and the reliability table [(mean p, mean a, share of pixels)] per bin."""
    p, a = p.ravel(), a.ravel()
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        sel = which == b
        share = float(sel.mean())
        if share == 0:
            table.append(None)
            continue
        mp, ma = float(p[sel].mean()), float(a[sel].mean())
        ece += share * abs(ma - mp)
        table.append((mp, ma, share))
    return {"ece": ece, "reliability": table}


def val_items(data: Path, limit: int | None, split: str = "val"):
    ids = (data / f"{split}.txt").read_text().split()[:limit]
    return [(i, next((data / "images").glob(f"{i}.*"))) for i in ids]


def score(pipe, items, data: Path, steps, ensemble, seed: int = 0, **options) -> dict:
    classes = pipe.classes
    rows, pool = [], {c: {"ens": ([], []), "one": ([], [])} for c in classes}
    for pos, (i, img) in enumerate(items):
        experts = {c: np.asarray(Image.open(data / "masks" / f"{i}_{c}.png").convert("L"),
                                 dtype=np.float32) / 255 for c in classes}
        box = experts_box(experts[classes[0]])
        ens = pipe.segment([img], steps=steps, ensemble=ensemble, seed=seed, noise_keys=[pos],
                           **options)[0]
        one = pipe.segment([img], steps=steps, ensemble=1, seed=seed, noise_keys=[pos],
                           **options)[0]
        row = {"id": i}
        for k, c in enumerate(classes):
            a = experts[c][box]
            for name, res in (("ens", ens), ("one", one)):
                p = np.asarray(res.probability)[k][box]
                row[f"{c}_mad_{name}"] = float(np.abs(p - a).mean())
                pool[c][name][0].append(p.ravel())
                pool[c][name][1].append(a.ravel())
            row[f"{c}_dice"] = dice(ens.class_regions()[k], experts[c] > 127 / 255)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for c in classes:
        s = {"dice_mean": float(np.mean([r[f"{c}_dice"] for r in rows]))}
        for name in ("ens", "one"):
            s[f"mad_{name}"] = float(np.mean([r[f"{c}_mad_{name}"] for r in rows]))
            p, a = (np.concatenate(v) for v in pool[c][name])
            s[f"calibration_{name}"] = calibration(p, a)
        summary[c] = s
    return {"rows": rows, "summary": summary}


def class_dice_frontier(pipe, items, data: Path, grid, **options) -> dict:
    """Per (steps, members) of `grid`: each class's mean Dice against the experts' majority
    and segment()'s seconds per image (the ensemble only; timed one image at a time)."""
    classes = pipe.classes
    truth = [{c: np.asarray(Image.open(data / "masks" / f"{i}_{c}.png").convert("L")) > 127
              for c in classes} for i, _ in items]
    rows = []
    for steps, ensemble in grid:
        dices, seconds = {c: [] for c in classes}, []
        for pos, (i, img) in enumerate(items):
            t0 = time.perf_counter()
            res = pipe.segment([img], steps=steps, ensemble=ensemble, seed=0,
                               noise_keys=[pos], **options)[0]
            seconds.append(time.perf_counter() - t0)
            for k, c in enumerate(classes):
                dices[c].append(dice(res.class_regions()[k], truth[pos][c]))
        row = {"steps": steps, "ensemble": ensemble, "spacing": options.get("spacing"),
               "tta": False, "seconds_per_image": float(np.median(seconds)),
               **{c: float(np.mean(v)) for c, v in dices.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"sources": list(classes), "rows": rows}


def int_list(text: str | None) -> list[int] | None:
    return None if text is None else [int(v) for v in text.split(",")]


def figure(pipe, item, data: Path, steps, ensemble, out: Path, **options) -> None:
    """One val image: the picture, the experts' agreement, the ensemble's probability and
    one sample's, each class side by side (disc top row, cup below), cropped to the box."""
    i, img = item
    classes = pipe.classes
    experts = {c: np.asarray(Image.open(data / "masks" / f"{i}_{c}.png").convert("L"))
               for c in classes}
    box = experts_box(experts[classes[0]])
    ens = pipe.segment([img], steps=steps, ensemble=ensemble, seed=0, noise_keys=[0],
                       **options)[0]
    one = pipe.segment([img], steps=steps, ensemble=1, seed=0, noise_keys=[0], **options)[0]
    picture = np.asarray(Image.open(img).convert("RGB"))[box]
    tiles = []
    for k, c in enumerate(classes):
        maps = [experts[c][box] / 255, np.asarray(ens.probability)[k][box],
                np.asarray(one.probability)[k][box]]
        row = [picture] + [np.repeat((m * 255).astype(np.uint8)[..., None], 3, -1)
                           for m in maps]
        tiles.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(tiles, axis=0)).save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--steps", default=None, help="N, or a comma list with --frontier")
    ap.add_argument("--ensemble", default=None, help="N, or a comma list with --frontier")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--spacing", choices=("leading", "trailing"), default=None)
    ap.add_argument("--crop", choices=("full", "zoom"), default=None)
    ap.add_argument("--zoom-outside", choices=ZOOM_OUTSIDE, default=None,
                    help="with --crop zoom: segment()'s zoom_outside (default: the file's own)")
    ap.add_argument("--zoom-passes", type=int, choices=ZOOM_PASSES, default=None,
                    help="with --crop zoom: segment()'s zoom_passes (default: the file's own)")
    ap.add_argument("--zoom-boxes", type=int, choices=ZOOM_BOXES, default=None,
                    help="with --crop zoom: segment()'s zoom_boxes (default: the file's own)")
    ap.add_argument("--tta", action="store_true",
                    help="segment()'s tta (members see flipped/rotated views, every pass)")
    ap.add_argument("--seed", type=int, default=0,
                    help="segment()'s seed (a zoom's boxes depend on its first pass's noise)")
    ap.add_argument("--split", default="val",
                    help="the data set's list to score (val; train to look at the fit)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--figure", default=None, help="PNG of the first val image's maps")
    ap.add_argument("--frontier", default=None,
                    help="write per-class Dice and time over the --steps x --ensemble grid")
    args = ap.parse_args()
    pipe = load(args.checkpoint)
    if pipe.mask_channels < 2:
        raise SystemExit(f"{args.checkpoint}: a binary model; this compares a model of "
                         "several classes with the experts' per-class maps")
    steps_list, members_list = int_list(args.steps), int_list(args.ensemble)
    items = val_items(args.data, args.limit, args.split)
    if args.frontier:
        _, _, spacing = pipe.sampler_settings(None, None, args.spacing)
        grid = list(itertools.product(steps_list or [pipe.sampler_settings()[0]],
                                      members_list or [pipe.sampler_settings()[1]]))
        run = class_dice_frontier(pipe, items, args.data, grid, spacing=spacing,
                                  crop=args.crop, zoom_outside=args.zoom_outside,
                                  zoom_passes=args.zoom_passes, zoom_boxes=args.zoom_boxes)
        run.update(limit=args.limit, checkpoint=args.checkpoint, crop=args.crop,
                   zoom_outside=args.zoom_outside, zoom_passes=args.zoom_passes,
                   zoom_boxes=args.zoom_boxes)
        Path(args.frontier).write_text(json.dumps(run))
        return
    if (steps_list and len(steps_list) > 1) or (members_list and len(members_list) > 1):
        raise SystemExit("several --steps or --ensemble values need --frontier FILE")
    steps, ensemble, spacing = pipe.sampler_settings(
        steps_list and steps_list[0], members_list and members_list[0], args.spacing)
    options = {"spacing": spacing, "crop": args.crop, "zoom_outside": args.zoom_outside,
               "zoom_passes": args.zoom_passes, "zoom_boxes": args.zoom_boxes,
               "tta": args.tta}
    result = score(pipe, items, args.data, steps, ensemble, args.seed, **options)
    result.update(checkpoint=args.checkpoint, steps=steps, ensemble=ensemble, seed=args.seed,
                  **options)
    print(json.dumps(result["summary"], indent=1))
    for c, s in result["summary"].items():
        print(f"{c}: Dice {s['dice_mean']:.3f}; MAD ensemble {s['mad_ens']:.4f} vs one "
              f"sample {s['mad_one']:.4f}; ECE ensemble {s['calibration_ens']['ece']:.4f} "
              f"vs one sample {s['calibration_one']['ece']:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result))
    if args.figure:
        figure(pipe, items[0], args.data, steps, ensemble, Path(args.figure), **options)


if __name__ == "__main__":
    main()
