"""DiffSeg: the official test loop against dsd_fast reference and fast, same weights, one run.

    python bench/bench_diffseg.py --official PATH [--images 4] [--draws 5] [--size 128]

PATH is a checkout of github CheneyNine/DiffSeg (its Model/UnetModel.py is imported from
there, by file location; nothing of it is in this repository). The published config
(96 channels, (1, 2, 2), 13.8 M parameters per model), random weights, 128 x 128 inputs.

  official: as run.py's test() does it, one image at a time and, for N outputs, N times:
            x_t = sqrt(abar_0) x + sqrt(1 - abar_0) eps for each model, each model's forward
            at batch 1, then the numpy post-processing (steps 4-7 of diffseg.md 5);
  dsd_fast: DiffSegPipeline.segment(image, ensemble=N): all N draws in one batched forward
            per model, torch post-processing, maps at the original size;
  DenseCRF: the published protocol (refine="crf-published") timed alone on the masks.
Prints images/s and ratios. Without --official the official row is skipped.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dsd_fast.families.diffseg import DIFFSEG, DiffSegConfig
from dsd_fast.families.diffseg.difference import t0_coefficients
from dsd_fast.families.diffseg.pipeline import DiffSegPipeline


def official_unet_class(checkout: Path):
    spec = importlib.util.spec_from_file_location("official_diffseg_unet",
                                                  checkout / "Model" / "UnetModel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.UNetModel


def official_masks(have, no, x, draws, a, s):
    """One image (1, 3, S, S) in [-1, 1], N outputs, as the published loop computes them."""
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    t = torch.zeros(1, dtype=torch.long)
    out = []
    for _ in range(draws):
        res = []
        for net in (have, no):
            x_t = a * x + s * torch.randn_like(x)
            r = (x_t - net(x_t, t))[0].permute(1, 2, 0)
            pix = ((r + 1) * 127.5).numpy().astype(int).astype(np.float32)
            lum = (pix * weights).sum(-1)
            res.append(lum - lum.min())
        g = res[1] - res[0] * 1.5
        g = (g - g.min()) * (255 / (g - g.min()).max())
        out.append(np.clip(g * 1.2, 0, 255) < 189)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, default=None, help="a CheneyNine/DiffSeg checkout")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    cfg = DiffSegConfig(image_size=args.size)
    have, no = DIFFSEG.build_reference(cfg).eval(), DIFFSEG.build_reference(cfg).eval()
    pipe = DiffSegPipeline(have, no)
    images = [torch.rand(3, args.size, args.size) for _ in range(args.images)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; DiffSeg published "
          f"config, {sum(p.numel() for p in have.parameters()) / 1e6:.1f} M parameters x 2, "
          f"{args.size} px, {args.draws} outputs per image, {args.images} images")
    rows = []
    if args.official is not None:
        cls = official_unet_class(args.official)
        off = []
        for net in (have, no):
            o = cls(in_channels=3, model_channels=96, out_channels=3, channel_mult=(1, 2, 2),
                    attention_resolutions=[]).eval()
            o.load_state_dict(net.state_dict())
            off.append(o)
        a, s = t0_coefficients(cfg.timesteps)
        with torch.no_grad():
            official_masks(*off, images[0][None] * 2 - 1, 1, a, s)          # warm-up
            times = []
            for img in images:
                t0 = time.perf_counter()
                official_masks(*off, img[None] * 2 - 1, args.draws, a, s)
                times.append(time.perf_counter() - t0)
        rows.append(("official test loop (batch 1, outputs in turn)", statistics.median(times)))
    for backend in ("reference", "fast"):
        pipe.segment(images[0], ensemble=args.draws, backend=backend)           # warm-up
        times = []
        for img in images:
            t0 = time.perf_counter()
            pipe.segment(img, ensemble=args.draws, backend=backend)
            times.append(time.perf_counter() - t0)
        rows.append((f"dsd_fast {backend} (draws batched)", statistics.median(times)))
    try:
        from dsd_fast.crf import diffseg_published_crf
        from dsd_fast.images import to_uint8_rgb
        times = []
        for img in images:
            samples = pipe.segment(img, ensemble=args.draws, return_samples=True)[0].samples
            t0 = time.perf_counter()
            diffseg_published_crf(to_uint8_rgb(img.numpy()), samples, np.random.default_rng(0))
            times.append(time.perf_counter() - t0)
        crf = statistics.median(times)
    except ImportError:
        crf = None
    base = rows[-1][1]
    print(f"{'what':<50}{'s / image':>11}{'images/s':>10}{'x fast':>8}")
    for what, secs in rows:
        print(f"{what:<50}{secs:>11.3f}{1 / secs:>10.2f}{secs / base:>8.1f}")
    if crf is not None:
        print(f"published DenseCRF protocol on top of fast: +{crf:.3f} s / image "
              f"({100 * crf / (base + crf):.0f}% of that total)")


if __name__ == "__main__":
    main()
