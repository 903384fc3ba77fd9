"""CPU benchmark of the fused FF-Parser op (csrc/ff_parser.cpp) against torch.fft.

    python bench/bench_ff_parser.py                   # batch 5, C in {32, 64, 128}, sizes 8..128
    python bench/bench_ff_parser.py --threads 1 --channels 64 --sizes 32 128
    python -m pytest bench/bench_ff_parser.py --benchmark-only      # pytest-benchmark variant

Per shape: the reference (dsd_fast.ops.reference.ff_parser_ref: rfft2 -> complex multiply
-> irfft2, norm="ortho") and the op through its wrapper (dsd_fast.ops.ff_parser), median
wall-clock milliseconds over interleaved runs in this one process, and the speed-up. Both are
first checked against each other on the same tensors; nothing is timed unless all match.

bench/ is not collected by `pytest tests`. Without the C++ extension it prints why and exits
with status 0.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import pytest
import torch

from dsd_fast import ops
from dsd_fast.ops.reference import ff_parser_ref

BATCH = 5
CHANNELS = (32, 64, 128)
SIZES = (8, 16, 32, 64, 128)


def make_inputs(c: int, s: int, batch: int = BATCH, seed: int = 0):
    """x (B, C, S, S); a MedSegDiff-like gate near the identity: (1, 0) + randn * 0.02."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, s, s, generator=g)
    w = torch.randn(c, s, s // 2 + 1, 2, generator=g) * 0.02 + torch.tensor([1.0, 0.0])
    return x, w


def check(x: torch.Tensor, w: torch.Tensor) -> float:
    """Max |op - reference| / max |reference|."""
    expected = ff_parser_ref(x, w)
    return ((ops.ff_parser(x, w) - expected).abs().max() / expected.abs().max()).item()


def median_ms(fns, runs: int, min_time: float) -> list[float]:
    """Median milliseconds of each fn, the fns interleaved so that they share the machine's
    noise (this box also runs other jobs). At least `runs` rounds and `min_time` seconds."""
    for fn in fns:                                   # warm-up: allocator, plan caches
        fn(); fn()
    times = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < runs or time.perf_counter() - start < min_time:
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        if len(times[0]) >= 50 * runs:
            break
    return [statistics.median(ts) * 1e3 for ts in times]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS))
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's default, "
                         f"{torch.get_num_threads()} here)")
    ap.add_argument("--runs", type=int, default=15, help="minimum timed rounds per shape")
    ap.add_argument("--min-time", type=float, default=0.5, help="minimum seconds per shape")
    args = ap.parse_args(argv)

    if not ops.AVAILABLE:
        print("dsd_fast._C_<isa> is not built (or DSD_FAST_DISABLE_EXT=1): nothing to measure. "
              "Build it with `pip install --no-build-isolation -e .`")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    shapes = [(c, s) for c in args.channels for s in args.sizes]
    worst = max(check(*make_inputs(c, s, args.batch)) for c, s in shapes)
    if worst > 1e-5:
        print(f"MISMATCH: op vs reference max relative error {worst:.2e} > 1e-5; not timing")
        return 1
    print(f"All results match (max relative error {worst:.1e}). Starting benchmarks.")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"median wall-clock ms of interleaved runs")
    print(f"{'C':>5} {'size':>5} {'torch.fft ms':>13} {'op ms':>9} {'speed-up':>9}")
    ratios = []
    for c, s in shapes:
        x, w = make_inputs(c, s, args.batch)
        t_ref, t_op = median_ms([lambda: ff_parser_ref(x, w), lambda: ops.ff_parser(x, w)],
                                args.runs, args.min_time)
        ratios.append(t_ref / t_op)
        print(f"{c:>5} {s:>5} {t_ref:>13.3f} {t_op:>9.3f} {t_ref / t_op:>8.1f}x", flush=True)
    print(f"speed-up: min {min(ratios):.1f}x, geometric mean "
          f"{statistics.geometric_mean(ratios):.1f}x, max {max(ratios):.1f}x")
    return 0


# ----------------------------------------------------------------------------- pytest-benchmark

@pytest.mark.skipif(not ops.AVAILABLE, reason="dsd_fast._C_<isa> is not built")
@pytest.mark.parametrize("impl", ["torch_fft", "op"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_ff_parser_speed(benchmark, channels, size, impl):
    x, w = make_inputs(channels, size)
    assert check(x, w) < 1e-5
    benchmark.group = f"ff_parser B={BATCH} C={channels} {size}x{size}"
    fn = ff_parser_ref if impl == "torch_fft" else ops.ff_parser
    benchmark(fn, x, w)


if __name__ == "__main__":
    sys.exit(main())
