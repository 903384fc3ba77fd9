"""A smaller copy of ../shared/data (PH2 and HAM10000: same folders, same train/val lists)
for a machine that cannot see ../shared, such as the lent GPU machine, whose working tree
travels with a 64 MiB limit (bench/gpu_msd_official.sh).

    python bench/pack_data.py OUT [--max-side 128] [--ham-train 2500] [--ham-val 20]
                              [--quality 92]

Images are shrunk so their longer side is at most --max-side (JPEG), masks alike (PNG,
nearest neighbour, so they stay binary). Training at 64 px holds images at 128 px
(train/sources.py), so 128 px loses little it uses. The defaults make ~9.6 MiB (PH2 0.4,
HAM10000 9.2), which fits beside the repository's ~48 MiB under the 64 MiB limit.
HAM10000's training list is a seeded random subset of --ham-train ids (0: all), its val
list the first --ham-val ids (the same images as `val_limit`); PH2 is copied whole.
Figures measured on a pack are on the packed size, not the original: say so where they are
reported. Data terms carry over (the datasets' READMEs): this copy is for the project's
own runs, never committed.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shrink(img: Image.Image, max_side: int, resample) -> Image.Image:
    w, h = img.size
    scale = max_side / max(w, h)
    if scale >= 1:
        return img
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def pack_source(src: Path, dst: Path, train_ids, val_ids, max_side: int, quality: int) -> int:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(exist_ok=True)
    for i in list(train_ids) + list(val_ids):
        img_path = next((src / "images").glob(f"{i}.*"))
        mask_path = next((src / "masks").glob(f"{i}.*"))
        img = shrink(Image.open(img_path).convert("RGB"), max_side, Image.BICUBIC)
        img.save(dst / "images" / f"{i}.jpg", quality=quality)
        mask = np.asarray(Image.open(mask_path).convert("L")) > 127
        small = shrink(Image.fromarray(mask.astype(np.uint8) * 255), max_side, Image.NEAREST)
        small.save(dst / "masks" / f"{i}.png", optimize=True)
    (dst / "train.txt").write_text("\n".join(train_ids) + "\n")
    (dst / "val.txt").write_text("\n".join(val_ids) + "\n")
    return sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--max-side", type=int, default=128)
    ap.add_argument("--ham-train", type=int, default=2500, help="0: every training id")
    ap.add_argument("--ham-val", type=int, default=20)
    ap.add_argument("--quality", type=int, default=92)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not (data / "ph2").is_dir() or not (data / "ham10000").is_dir():
        raise SystemExit(f"{data} does not hold ph2/ and ham10000/")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not empty: give a new folder")
    total = 0
    for name in ("ph2", "ham10000"):
        src = data / name
        train = (src / "train.txt").read_text().split()
        val = (src / "val.txt").read_text().split()
        if name == "ham10000":
            if args.ham_train:
                train = sorted(random.Random(args.seed).sample(train, min(args.ham_train,
                                                                         len(train))))
            val = val[:args.ham_val]
        size = pack_source(src, out / name, train, val, args.max_side, args.quality)
        total += size
        print(f"{name}: {len(train)} train + {len(val)} val images, {size / 2**20:.1f} MiB")
    print(f"{out}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
