"""The fused GroupNorm + SiLU op on NCHW and channels_last input, against torch's
channels_last GroupNorm + SiLU (what a channels_last network would run without the op).

    python bench/bench_group_norm_layouts.py [--threads 1,2]

Median ms of 15 calls per shape (batch 5 = one ensemble; shapes of the isic2018, DiffSeg and
bundled networks).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench_peers import median_ms
from dsd_fast import ops

SHAPES = [(5, 128, 128, 32), (5, 96, 128, 32), (5, 192, 64, 32), (5, 16, 64, 8),
          (5, 512, 16, 32)]          # (B, C, size, groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    print(f"C++ build: {ops.ISA}")
    for th in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(th)
        for b, c, s, g in SHAPES:
            x = torch.randn(b, c, s, s)
            xc = x.contiguous(memory_format=torch.channels_last)
            gamma, beta = torch.randn(c), torch.randn(c)
            nchw = median_ms(lambda: ops.group_norm_silu(x, gamma, beta, g, 1e-5), 15)
            nhwc = median_ms(lambda: ops.group_norm_silu(xc, gamma, beta, g, 1e-5), 15)
            pair = median_ms(lambda: F.silu(F.group_norm(xc, g, gamma, beta, 1e-5), inplace=True), 15)
            print(f"{th} thread(s) {(b, c, s, s)} groups {g}: op NCHW {nchw:.2f} ms, "
                  f"op channels_last {nhwc:.2f}, torch channels_last GroupNorm + SiLU {pair:.2f} "
                  f"({pair / nhwc:.2f}x the op)")


if __name__ == "__main__":
    with torch.no_grad():
        main()
