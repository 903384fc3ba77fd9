"""Compile every Triton kernel configuration the engine launches for sm_80 and sm_90, on
this machine (no GPU needed), and report each block's shared memory against the limits.

    TRITON_DEFAULT_FP_FUSION=1 python bench/aot_compile.py [--archs 80 90]

A 64 px FF-Parser takes ~2 minutes of CPU per architecture; the whole set ~15 minutes.
Exit status 1 when a configuration does not fit.
"""
from __future__ import annotations

import argparse
import sys
import time

from dsd_fast.ops.triton import aot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, nargs="+", default=list(aot.ARCHS))
    args = ap.parse_args()
    bad = 0
    print(f"{'configuration':<48}{'sm':>4}{'shared B':>10}{'limit':>9}{'s':>7}  verdict")
    for k in aot.shape_classes():
        for cc in args.archs:
            t0 = time.perf_counter()
            r = aot.compile_class(k, cc)
            bad += not r["fits"]
            print(f"{k.label:<48}{cc:>4}{r['shared']:>10}{aot.SHARED_LIMIT[cc]:>9}"
                  f"{time.perf_counter() - t0:>7.1f}  {'fits' if r['fits'] else 'TOO LARGE'}",
                  flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
