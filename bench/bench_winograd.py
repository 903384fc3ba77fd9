"""Winograd F(4x4, 3x3) (`ops.winograd_conv3x3`) against oneDNN's direct 3x3 convolution
(F.conv2d, channels_last, float32) at the networks' shapes, side by side in one process.

    python bench/bench_winograd.py [--threads 1,2] [--repeats 5] [--shapes isic2018,small]

Prints per shape: direct ms and GFLOP/s, Winograd ms and its "effective" GFLOP/s (the direct
convolution's multiply-adds over Winograd's time: what the same layer now runs at), the
ratio, and Winograd's max error against the direct convolution in float64 (of the output's
scale). Bias included in both. The op must be built (the C++ extension); which ISA build
runs follows DSD_FAST_ISA as everywhere.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench_peers import median_ms
from dsd_fast import ops

# (batch, C_in, size, C_out)
SHAPES = {
    # the isic2018 network's four costliest 3x3 convolutions (bench_conv_limits.py) and its
    # bottleneck
    "isic2018": [(5, 320, 128, 128), (5, 128, 128, 128), (5, 448, 64, 256),
                 (5, 256, 64, 256), (5, 512, 16, 512)],
    # the bundled default (16 wide, 64 px) and w32 levels; MedSegDiff's 64-channel level
    "small": [(5, 32, 64, 32), (5, 16, 64, 16), (5, 64, 64, 64), (5, 64, 32, 64),
              (5, 128, 16, 128)],
    # the official MedSegDiff V2 at the README's 256 px (128-256 channels)
    "official256": [(5, 128, 256, 128), (5, 256, 64, 256)],
}


def run(shape, repeats: int) -> tuple[float, float, float]:
    n, c, s, k = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, s, s, generator=gen).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(k, c, 3, 3, generator=gen) / (9 * c) ** 0.5).contiguous(
        memory_format=torch.channels_last)
    b = torch.randn(k, generator=gen)
    u = ops.winograd_weight(w)
    exact = F.conv2d(x[:1].double(), w.double(), b.double(), padding=1)
    err = ((ops.winograd_conv3x3(x[:1], u, b).double() - exact).abs().max()
           / exact.abs().max()).item()
    direct = median_ms(lambda: F.conv2d(x, w, b, padding=1), repeats)
    wino = median_ms(lambda: ops.winograd_conv3x3(x, u, b), repeats)
    return direct, wino, err


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shapes", default="isic2018,small,official256")
    a = p.parse_args()
    if not ops.AVAILABLE:
        raise SystemExit("the C++ extension is not built: python setup.py build_ext --inplace")
    print(f"kernels: {ops.ISA}")
    for threads in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(threads)
        ratios = []
        for group in a.shapes.split(","):
            for shape in SHAPES[group]:
                n, c, s, k = shape
                gflop = 2 * n * c * k * 9 * s * s / 1e9
                direct, wino, err = run(shape, a.repeats)
                ratios.append(direct / wino)
                print(f"threads {threads} {group} {shape}: direct {direct:8.1f} ms "
                      f"({gflop / direct * 1e3:4.0f} GFLOP/s), winograd {wino:8.1f} ms "
                      f"({gflop / wino * 1e3:4.0f} effective), {direct / wino:.2f}x, "
                      f"max error {err:.1e} of scale", flush=True)
        ratios.sort()
        print(f"threads {threads}: median ratio {ratios[len(ratios) // 2]:.2f}x "
              f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})", flush=True)


if __name__ == "__main__":
    main()
