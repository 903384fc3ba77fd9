"""MedSegDiff (med-seg-diff-pytorch 0.3.3) as its users run it, against dsd_fast, one image.

    python bench/bench_medsegdiff.py [--size 128] [--dim 64] [--ensemble 5] [--ddpm-steps 5]

The package's default config (dim 64, dim_mults (1, 2, 4, 8), 128 px, T 1000 cosine,
pred_noise), random weights (speed does not depend on them). Side by side in one process:
  - the package's DDPM, 1000 steps per sample, the ensemble one sample after another as its
    sample.py does: timed over --ddpm-steps steps and extrapolated to 1000 x ensemble
    (a full run is ~40 min per image here; the figure says it is extrapolated);
  - the package's DDIM (sampling_timesteps 25, its default eta 1), samples one after another;
  - dsd_fast reference and fast: DDIM 25 steps, the whole ensemble in one batch.
Prints seconds per image and the ratios. Needs the package (the Makefile installs it).
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps")
    ap.add_argument("--ddpm-steps", type=int, default=5, help="package DDPM steps timed")
    args = ap.parse_args()
    import med_seg_diff_pytorch as msd

    import dsd_fast
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    unet = msd.Unet(dim=args.dim, image_size=args.size, dim_mults=(1, 2, 4, 8)).eval()
    n_params = sum(p.numel() for p in unet.parameters())
    pipe = dsd_fast.pipeline_from_network(
        dsd_fast.load_model(unet.state_dict()))           # same weights, package defaults
    image = torch.rand(3, args.size, args.size)
    E, S = args.ensemble, args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; package Unet dim "
          f"{args.dim}, {args.size} px, {n_params / 1e6:.1f} M parameters; ensemble {E}")
    rows = []

    # the package's DDPM: p_sample per step, as its sample loop calls it
    ddpm = msd.MedSegDiff(unet, timesteps=1000).eval()
    x = torch.randn(1, 1, args.size, args.size)
    cond = image[None]
    with torch.no_grad():
        ddpm.p_sample(x, 999, cond)                        # warm-up
        t0 = time.perf_counter()
        for t in range(999, 999 - args.ddpm_steps, -1):
            x, _ = ddpm.p_sample(x, t, cond)
        per_step = (time.perf_counter() - t0) / args.ddpm_steps
    rows.append(("package DDPM 1000 steps, samples in turn (extrapolated)", per_step * 1000 * E))

    ddim = msd.MedSegDiff(unet, timesteps=1000, sampling_timesteps=S).eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(E):
            ddim.sample(cond)
        rows.append((f"package DDIM {S} steps, samples in turn", time.perf_counter() - t0))

    for backend in ("reference", "fast"):
        pipe.segment(image, steps=2, ensemble=E, backend=backend)      # warm-up, fast build
        t0 = time.perf_counter()
        pipe.segment(image, steps=S, ensemble=E, backend=backend)
        rows.append((f"dsd_fast {backend}, DDIM {S} steps, ensemble batched",
                     time.perf_counter() - t0))

    base = rows[-1][1]
    print(f"{'what':<58}{'s / image':>12}{'x fast':>10}")
    for what, secs in rows:
        print(f"{what:<58}{secs:>12.1f}{secs / base:>10.1f}")


if __name__ == "__main__":
    main()
