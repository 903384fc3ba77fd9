"""precision="bf16" against float32: masks on the 20 PH2 val images, and speed.

    python bench/bench_precision.py [--models default,medsegdiff] [--steps 25]
                                    [--ensemble 5] [--forward isic2018,default]

Per bundled model: segment() of every PH2 val image in fp32 and in bf16 (fast backend,
segment()'s defaults); per image Dice(bf16 mask, fp32 mask), and each one's Dice against
the expert mask; s/image of both. --forward adds the fast network's forward at batch 5
(one ensemble) in fp32 and bf16 for the named configs (random weights), median of 3, with
the bf16 output's max error as a fraction of the fp32 output's scale. Needs ../shared.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dsd_fast
from dsd_fast.families import family_of_network
from dsd_fast.metrics import dice
from dsd_fast.precision import native_bf16

PH2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ph2"


def masks(pipe, paths, precision):
    t0 = time.perf_counter()
    out = [pipe.segment(p, precision=precision, backend="fast", **ARGS)[0].mask for p in paths]
    return out, (time.perf_counter() - t0) / len(paths)


def agreement(name: str) -> None:
    pipe = dsd_fast.load(name)
    ids = (PH2 / "val.txt").read_text().split()
    paths = [PH2 / "images" / f"{i}.png" for i in ids]
    gts = [np.array(Image.open(PH2 / "masks" / f"{i}.png")) > 0 for i in ids]
    m32, s32 = masks(pipe, paths, "fp32")
    m16, s16 = masks(pipe, paths, "bf16")
    agree = [dice(b, a) for a, b in zip(m32, m16)]
    d32 = [dice(m, g) for m, g in zip(m32, gts)]
    d16 = [dice(m, g) for m, g in zip(m16, gts)]
    print(f"{name}: {len(ids)} PH2 val images; Dice(bf16, fp32) per image: min "
          f"{min(agree):.4f}, median {statistics.median(agree):.4f}, "
          f"{sum(a >= 0.99 for a in agree)}/{len(agree)} >= 0.99; Dice vs expert: fp32 "
          f"{np.mean(d32):.4f}, bf16 {np.mean(d16):.4f}; s/image fp32 {s32:.2f}, bf16 "
          f"{s16:.2f} ({s32 / s16:.2f}x)", flush=True)


def forward(name: str, repeats: int = 3) -> None:
    torch.manual_seed(0)
    net = dsd_fast.build_model(dsd_fast.get_config(name)).eval()
    fam = family_of_network(net)
    s = fam.preprocessing(fam.config_of(net)).image_size
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(5, 1, s, s, generator=g), torch.rand(5, 3, s, s, generator=g),
            torch.full((5,), 120))
    pipe = dsd_fast.pipeline_from_network(net)
    times = {}
    with torch.no_grad():
        for prec in ("fp32", "bf16"):
            f = pipe.eps_model("fast", prec)
            out = f(*args)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                f(*args)
                ts.append(time.perf_counter() - t0)
            times[prec] = (statistics.median(ts), out)
    (t32, o32), (t16, o16) = times["fp32"], times["bf16"]
    err = float((o16 - o32).abs().max() / o32.abs().max())
    print(f"{name} fast forward, batch 5: fp32 {t32 * 1000:.0f} ms, bf16 {t16 * 1000:.0f} ms "
          f"({t32 / t16:.2f}x), bf16 max error {err:.1e} of scale", flush=True)


ARGS: dict = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,medsegdiff")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--forward", default="")
    args = ap.parse_args()
    if not native_bf16("cpu"):
        raise SystemExit("this CPU has no native bfloat16: bf16 would run as fp32")
    ARGS.update(steps=args.steps, ensemble=args.ensemble)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in filter(None, args.models.split(",")):
        try:
            agreement(name)
        except FileNotFoundError as e:
            print(f"{name}: skipped ({e})")
    for name in filter(None, args.forward.split(",")):
        forward(name)


if __name__ == "__main__":
    main()
