"""A contact sheet of the validation images a model fails on, to judge them by eye.

    python bench/failure_sheet.py --results A.json [B.json ...] --out FIG.png [--below 0.5]

A.json, B.json: bench/eval_sources.py outputs (its shards), whose per-image rows name the
source, id and Dice. Every image below --below is segmented again with the same checkpoint
and settings, its noise keyed by its position in eval_sources' list as there (give the
same --ham-limit), so the masks are the ones scored, and drawn on a grid: the image, the
dataset's mask outlined in green, the model's in red, the id and Dice underneath.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

import dsd_fast
from dsd_fast.images import load_mask
from dsd_fast.metrics import dice

TILE = 256


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels, two pixels wide."""
    mask = mask.astype(bool)
    return mask & ~ndimage.binary_erosion(mask, iterations=2)


def tile(image: Image.Image, gt: np.ndarray, pred: np.ndarray, label: str) -> Image.Image:
    rgb = np.array(image.convert("RGB"))
    rgb[outline(gt)] = (0, 220, 0)
    rgb[outline(pred)] = (230, 0, 0)
    im = Image.fromarray(rgb)
    im.thumbnail((TILE, TILE))
    out = Image.new("RGB", (TILE, im.height + 18), "white")
    out.paste(im, ((TILE - im.width) // 2, 0))
    ImageDraw.Draw(out).text((4, im.height + 3), label, fill="black")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--below", type=float, default=0.5)
    ap.add_argument("--columns", type=int, default=5)
    ap.add_argument("--ham-limit", type=int, default=None, help="as given to eval_sources.py")
    args = ap.parse_args(argv)
    runs = [json.loads(Path(p).read_text()) for p in args.results]
    settings = {k: runs[0][k] for k in ("checkpoint", "steps", "ensemble", "spacing", "tta")}
    if any({k: r[k] for k in settings} != settings for r in runs):
        raise SystemExit("the result files were made with different settings")
    rows = sorted((r for run in runs for r in run["rows"] if r["dice"] < args.below),
                  key=lambda r: r["dice"])
    if not rows:
        raise SystemExit(f"no image below {args.below}")
    from eval_sources import val_items          # bench/ is on the path when run as a script
    where = {(source, i): (pos, img, mask)
             for pos, (source, i, img, mask) in enumerate(val_items(args.ham_limit))}
    pipe = dsd_fast.load(settings["checkpoint"])
    tiles = []
    for r in rows:
        pos, path, mask_path = where[(r["source"], r["id"])]
        gt = load_mask(mask_path).numpy() > 0
        res = pipe.segment([path], steps=settings["steps"], ensemble=settings["ensemble"],
                           seed=0, noise_keys=[pos], spacing=settings["spacing"],
                           tta=settings["tta"])[0]
        d = dice(res.mask, gt)
        tiles.append(tile(Image.open(path), gt, res.mask, f"{r['id']}  Dice {d:.2f}"))
        print(f"{r['source']} {r['id']}: Dice {d:.3f} (results file: {r['dice']:.3f})")
    cols = min(args.columns, len(tiles))
    row_h = max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * TILE, -(-len(tiles) // cols) * row_h), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * TILE, (i // cols) * row_h))
    sheet.save(args.out)
    print(f"{len(tiles)} images -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
