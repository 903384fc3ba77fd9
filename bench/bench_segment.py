"""segment() end to end on PH2 images: seconds per image, images/s and peak memory per backend.

    python bench/bench_segment.py [--images 5] [--steps 25] [--ensemble 5] [--checkpoint PATH]

Each backend runs in its own subprocess (so peak RSS is its own), on the same images, with
the same seed; the parent prints medians and the fast/reference ratio from this one run.
Without --checkpoint it uses the bundled default model; if none is bundled yet, a randomly
initialised `default`-config model with a damped output layer (timing only: its masks mean
nothing, but its chains stay finite like a trained model's).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PH2 = ROOT.parent / "shared" / "data" / "ph2"


def load_pipeline(checkpoint: str | None):
    import torch

    from dsd_fast import DermoSegDiff, get_config, load, pipeline_from_network
    from dsd_fast.api import DEFAULT_MODEL_PATH
    if checkpoint:
        return load(checkpoint), checkpoint
    if DEFAULT_MODEL_PATH.exists():
        return load(), "bundled default"
    torch.manual_seed(0)
    model = DermoSegDiff(get_config("default")).eval()
    with torch.no_grad():
        model.final_conv.weight.mul_(0.05)
    return pipeline_from_network(model), "random default config (timing only)"


def child(args) -> None:
    """Runs in the subprocess: time segment() per image, print one JSON line."""
    from dsd_fast import segment
    model, what = load_pipeline(args.checkpoint)
    ids = (PH2 / "val.txt").read_text().split()[:args.images]
    paths = [PH2 / "images" / f"{i}.png" for i in ids]
    segment(paths[0], steps=2, ensemble=args.ensemble, model=model, backend=args.backend)  # warm-up
    times = []
    for p in paths:
        t0 = time.perf_counter()
        segment(p, steps=args.steps, ensemble=args.ensemble, model=model, backend=args.backend)
        times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"backend": args.backend, "model": what, "median_s": statistics.median(times),
                      "times": times, "peak_mb": peak_mb}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--ensemble", type=int, default=5)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--backend", default=None, help=argparse.SUPPRESS)   # child mode
    args = p.parse_args(argv)
    if args.backend:
        return child(args)
    if not (PH2 / "images").is_dir():
        sys.exit(f"PH2 images not found at {PH2}")
    rows = []
    for backend in ("reference", "fast"):
        cmd = [sys.executable, __file__, "--backend", backend, "--images", str(args.images),
               "--steps", str(args.steps), "--ensemble", str(args.ensemble)]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"model: {rows[0]['model']}; {args.images} PH2 val images, {args.steps} DDIM steps, "
          f"ensemble {args.ensemble}")
    print(f"{'backend':<10}{'median s/img':>14}{'images/s':>10}{'peak MB':>10}")
    for r in rows:
        print(f"{r['backend']:<10}{r['median_s']:>14.2f}{1 / r['median_s']:>10.3f}{r['peak_mb']:>10.0f}")
    print(f"fast / reference speed: {rows[0]['median_s'] / rows[1]['median_s']:.2f}x")


if __name__ == "__main__":
    main()
