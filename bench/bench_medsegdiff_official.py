"""The official MedSegDiff code (V2) as its users run it, against dsd_fast, one image.

    PYTHONPATH=CHECKOUT python bench/bench_medsegdiff_official.py [--size 256] [--steps 25]
        [--layouts N]

CHECKOUT is a checkout of github.com/ImprintLab/MedSegDiff (not part of dsd_fast); its
imports of torchvision / batchgenerators / blobfile must resolve too (on a machine without
them, put stub modules on PYTHONPATH beside it). The README's ISIC flags (129 M parameters, 256 px, 1000 linear steps,
learn_sigma), random weights (speed does not depend on them). Side by side in one process:
  - the official sampler: p_sample_loop_known, 1000 DDPM steps per sample, the 5 ensemble
    samples one after another as its segmentation_sample.py does, every step recomputing the
    anchor network and a freshly built random 480 -> 512 convolution; timed over
    --ddpm-steps steps and extrapolated to 1000 x ensemble (the figure says so);
  - dsd_fast reference and fast: DDIM and DPM-Solver++ at --steps, the whole ensemble in one
    batch, the anchor computed once per image.
Prints seconds per image, the ratios (medians of --repeats), and the fast path's GFLOP/s
(forward FLOPs from torch's flop counter x steps, plus one anchor pass per image) against the
float32 3x3-convolution peaks measured in the same run (bench_peers.conv_peak), NCHW and
channels_last (the fast V2 network's layout). --layouts N times the fast UNet forward in
both layouts side by side (why the fast network is channels_last).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def layout_forwards(net, E: int, S: int, repeats: int) -> tuple[float, float]:
    """Median seconds of the fast UNet forward (anchor features given) in NCHW and in
    channels_last, alternating so that drifts in machine speed hit both."""
    from dsd_fast.families.medsegdiff_official.fast import build_fast_model
    nets = [build_fast_model(net, channels_last=False), build_fast_model(net)]
    x, img, t = torch.randn(E, 1, S, S), torch.rand(E, 3, S, S), torch.full((E,), 500)
    times = [[], []]
    with torch.no_grad():
        anchors = [m.anchors(img)[0] for m in nets]
        for _ in range(repeats):
            for k, m in enumerate(nets):
                t0 = time.perf_counter()
                m.unet(x, img, t, anchors[k])
                times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--ddpm-steps", type=int, default=2, help="official DDPM steps timed")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backends", default="reference,fast")
    ap.add_argument("--samplers", default="ddim,dpmpp")
    ap.add_argument("--layouts", type=int, default=0, metavar="N",
                    help="also time N alternating batch-E UNet forwards of the fast network "
                         "in NCHW and in channels_last (its layout), side by side")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from guided_diffusion.script_util import (create_model_and_diffusion,
                                                  model_and_diffusion_defaults)
    except ImportError as e:
        sys.exit(f"the official MedSegDiff code is not importable ({e}): put a checkout of "
                 "ImprintLab/MedSegDiff on PYTHONPATH")

    import dsd_fast
    from dsd_fast.families.medsegdiff_official import MEDSEGDIFF_OFFICIAL
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    flags = model_and_diffusion_defaults()
    flags.update(image_size=args.size, num_channels=128, num_res_blocks=2, num_heads=1,
                 in_ch=4, learn_sigma=True, use_scale_shift_norm=False,
                 attention_resolutions="16", diffusion_steps=1000, noise_schedule="linear",
                 version="new", class_cond=False)
    model, diffusion = create_model_and_diffusion(**flags)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    config = MEDSEGDIFF_OFFICIAL.infer_config(model.state_dict(), image_size=args.size,
                                              num_heads=1, timesteps=1000)
    net = MEDSEGDIFF_OFFICIAL.build_reference(config).eval()
    net.load_state_dict(model.state_dict())
    pipe = dsd_fast.pipeline_from_network(net)
    S, E = args.size, args.ensemble
    img = torch.cat([torch.rand(1, 3, S, S), torch.zeros(1, 1, S, S)], 1)

    def official_steps():
        # p_sample_loop_known's per-step work, `--ddpm-steps` times: the model on
        # cat(image, x) (anchor and the random conv inside) and the learned-range step.
        x = torch.cat([img[:, :3], torch.randn(1, 1, S, S)], 1)
        with torch.no_grad():
            for i in range(args.ddpm_steps):
                t = torch.tensor([999 - i])
                out = diffusion.p_sample(model, x, t, clip_denoised=True)
                x = torch.cat([img[:, :3], out["sample"]], 1)

    per_step = timed(official_steps, args.repeats) / args.ddpm_steps
    official = per_step * 1000 * E
    image = img[0, :3]
    from bench_peers import conv_peak
    # the peak before and after the timed runs, the higher kept: this machine's speed drifts
    # within a run, and a peak caught in a slow moment would flatter the fraction
    peaks_before = conv_peak(3)
    rows = {}
    for backend in args.backends.split(","):
        for sampler in args.samplers.split(","):
            rows[f"dsd_fast {backend} {sampler} {args.steps}"] = timed(
                lambda: pipe.segment([image], steps=args.steps, ensemble=E, sampler=sampler,
                                     backend=backend), args.repeats)
    if args.layouts:
        layouts = layout_forwards(net, E, S, args.layouts)
    from torch.utils.flop_counter import FlopCounterMode
    x5 = torch.randn(E, 1, S, S)
    im5 = image[None].expand(E, -1, -1, -1).contiguous()
    with torch.no_grad():
        anchor, _ = net.anchors(im5[:1])
        with FlopCounterMode(display=False) as fc:
            net.unet(x5, im5, torch.full((E,), 500), anchor.expand(E, -1, -1, -1))
        unet_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            net.anchors(im5[:1])
        anchor_flops = fc.get_total_flops()
    work = (unet_flops * args.steps + anchor_flops) / 1e9
    peaks = {k: max(v, peaks_before[k]) for k, v in conv_peak(3).items()}
    peak, peak_cl = peaks["float32 NCHW"], peaks["float32 NHWC"]
    print(f"official MedSegDiff V2, {n_params / 1e6:.2f} M parameters, {S} px, ensemble {E}, "
          f"{torch.get_num_threads()} threads")
    print(f"  official DDPM 1000 x {E}: {per_step:.2f} s per step -> {official:.0f} s per "
          f"image (extrapolated from {args.ddpm_steps} steps)")
    print(f"  float32 3x3 conv peak (5, 256, 64, 64) this run (the higher of before and after "
          f"the timed runs): NCHW {peak:.0f}, channels_last "
          f"{peak_cl:.0f} GFLOP/s; a {args.steps}-step run is {work:.0f} GFLOP per image "
          f"(forward x steps + 1 anchor)")
    for name, sec in rows.items():
        print(f"  {name:32s} {sec:8.1f} s per image   {official / sec:7.1f}x faster   "
              f"{work / sec:6.0f} GFLOP/s ({100 * work / sec / peak:.0f}% of the NCHW conv "
              f"peak, {100 * work / sec / peak_cl:.0f}% of the channels_last one)")
    if args.layouts:
        nchw, cl = layouts
        print(f"  fast UNet forward, batch {E} (medians of {args.layouts}): NCHW {nchw:.2f} s, "
              f"channels_last {cl:.2f} s ({nchw / cl:.2f}x); "
              f"{unet_flops / 1e9 / cl:.0f} GFLOP/s in channels_last")


if __name__ == "__main__":
    main()
