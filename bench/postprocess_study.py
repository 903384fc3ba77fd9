"""Does cleaning the mask help? Per-image Dice of saved probability maps with and without
each post-processing of dsd_fast.postprocess, per source, paired.

    python bench/eval_sources.py --save-prob DIR [--shard K/N ...]    # once per model
    python bench/postprocess_study.py DIR [DIR2 ...]

Reads DIR/SOURCE_ID.npz (eval_sources.py's uint16 maps at the original size) and the ground
truth masks of ../shared/data/SOURCE/masks; scores the published rule (p > 0.5) and every
method of postprocess.METHODS on the same maps. Prints per source: mean Dice, images below
0.5, and the paired difference against no post-processing (mean, standard error, wins,
losses, the largest losses with their ids so they can be looked at).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dsd_fast.images import load_mask
from dsd_fast.metrics import dice
from dsd_fast.postprocess import METHODS, postprocess_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def split_stem(stem: str, sources) -> tuple[str, str]:
    """"kvasir_seg_cju0qkwl35piu0993l0dewei2" -> ("kvasir_seg", "cju0..."): the source is
    the longest of `sources` (data set names) the stem starts with, then "_" (set names
    hold underscores too, ids may as well)."""
    for name in sorted(sources, key=len, reverse=True):
        if stem.startswith(name + "_"):
            return name, stem[len(name) + 1:]
    raise ValueError(f"{stem!r} does not start with a data set name of {sorted(sources)}")


def study(folder: Path) -> None:
    rows = []
    sources = [d.name for d in DATA.iterdir() if d.is_dir()]       # listed once
    for f in sorted(folder.glob("*.npz")):
        source, ident = split_stem(f.stem, sources)
        prob = np.load(f)["p"].astype(np.float32) / 65535
        gt = load_mask(next((DATA / source / "masks").glob(f"{ident}.*"))).numpy()
        raw = prob > 0.5
        row = {"source": source, "id": ident, "none": dice(raw, gt)}
        for m in METHODS:
            row[m] = dice(postprocess_mask(raw, m), gt)
        rows.append(row)
    print(f"{folder}: {len(rows)} images")
    for source in sorted({r["source"] for r in rows}) + ["all"]:
        rs = [r for r in rows if source in ("all", r["source"])]
        base = np.array([r["none"] for r in rs])
        print(f"  {source:<9} none: Dice {base.mean():.4f}, {int((base < 0.5).sum())} below 0.5")
        for m in METHODS:
            d = np.array([r[m] for r in rs])
            diff = d - base
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            worst = sorted(((float(x), r["id"]) for x, r in zip(diff, rs)))[:3]
            print(f"  {'':<9} {m}: Dice {d.mean():.4f}, {int((d < 0.5).sum())} below 0.5; "
                  f"paired {diff.mean():+.4f} (se {se:.4f}), wins {int((diff > 0).sum())}, "
                  f"losses {int((diff < 0).sum())}; largest losses "
                  + ", ".join(f"{i} {x:+.3f}" for x, i in worst if x < 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    for folder in ap.parse_args().folders:
        study(folder)


if __name__ == "__main__":
    main()
