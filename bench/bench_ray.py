"""Scale-out on Ray against the local command, same images, same options, one machine.

    python bench/bench_ray.py [--images 20] [--checkpoint PATH]

Runs `dsd-fast segment` on the first N PH2 validation images three ways, each into a fresh
folder: locally (2 threads), on a local Ray instance with 1 worker x 2 threads, and with
2 workers x 1 thread (the threads always add up to the machine's 2 cores). Prints wall
time, images/s, and Ray's overhead per image against the local run: Ray's start-up,
scheduling and the actors' model loading, all of it, since the images are the same.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PH2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ph2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()
    ids = (PH2 / "val.txt").read_text().split()[:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i in ids:
            (src / f"{i}.png").symlink_to(PH2 / "images" / f"{i}.png")
        base = [sys.executable, "-m", "dsd_fast.cli", "segment", str(src), "-q"]
        if args.checkpoint:
            base += ["--checkpoint", args.checkpoint]
        runs = [("local, 2 threads", ["--threads", "2"]),
                ("ray, 1 worker x 2 threads", ["--ray", "--workers", "1", "--threads", "2"]),
                ("ray, 2 workers x 1 thread", ["--ray", "--workers", "2", "--threads", "1"])]
        rows = []
        for k, (what, extra) in enumerate(runs):
            t0 = time.perf_counter()
            proc = subprocess.run(base + ["-o", str(Path(tmp) / f"out{k}")] + extra,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"{what} failed: {proc.stderr[-2000:]}")
            rows.append((what, wall))
    n = len(ids)
    local = rows[0][1]
    print(f"{n} PH2 images, segment() defaults (DDIM 25 x 5), 2-core machine")
    print(f"{'run':<30}{'wall s':>9}{'images/s':>10}{'overhead s/img':>16}")
    for what, wall in rows:
        print(f"{what:<30}{wall:>9.1f}{n / wall:>10.3f}{(wall - local) / n:>16.2f}")


if __name__ == "__main__":
    main()
