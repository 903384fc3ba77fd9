"""GPU benchmark of the Triton kernels (dsd_fast/ops/triton/) against eager PyTorch.

    python bench/bench_gpu.py                  # batch 5, C in {32, 64, 128}, sizes 8..128
    python bench/bench_gpu.py --sizes 32 128 --channels 64 --dtype bf16
    python -m pytest bench/bench_gpu.py --benchmark-only     # pytest-benchmark variant

Per kernel and shape: the eager reference (torch.fft rfft2 -> multiply -> irfft2;
F.group_norm -> scale/shift -> F.silu; F.conv2d -> multiply) and the Triton kernel, median
milliseconds from triton.testing.do_bench (L2 flushed between runs, PyTorch's current
stream), the speed-up, and the Triton kernel's achieved bandwidth counting only the
compulsory traffic (inputs read once, output written once). Every kernel is first checked
against its reference on the same tensors; nothing is timed unless all match.

Without a CUDA device (or without Triton) it prints why and exits with status 0.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from dsd_fast.ops import triton as kernels

BATCH = 5
CHANNELS = (32, 64, 128)
SIZES = (8, 16, 32, 64, 128)
GROUPS = 8


def _ready() -> str | None:
    """None if the benchmark can run, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "no CUDA device: the Triton GPU benchmark needs one (nothing to measure here)"
    if not kernels.TRITON_AVAILABLE:
        return "Triton is not installed (a CUDA build of torch ships it)"
    if kernels.INTERPRET:
        return "TRITON_INTERPRET=1 is set: unset it to time compiled kernels"
    return None


# ----------------------------------------------------------------------------- cases

def _ff_case(B, C, S, dtype):
    from dsd_fast.ops.triton.ff_parser import ff_parser
    x = torch.randn(B, C, S, S, device="cuda", dtype=dtype)
    w = torch.randn(C, S, S // 2 + 1, 2, device="cuda") * 0.02 + torch.tensor([1.0, 0.0],
                                                                               device="cuda")
    wc = torch.view_as_complex(w)

    def ref():   # torch.fft has no bf16: the reference runs in float32 (as MedSegDiff does)
        spec = torch.fft.rfft2(x.float(), norm="ortho") * wc
        return torch.fft.irfft2(spec, s=(S, S), norm="ortho").to(dtype)

    nbytes = 2 * x.numel() * x.element_size() + w.numel() * 4
    return ref, lambda: ff_parser(x, w), nbytes


def _gn_case(B, C, S, dtype, channels_last=False):
    from dsd_fast.ops.triton.group_norm_silu import group_norm_silu
    x = torch.randn(B, C, S, S, device="cuda", dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    gamma, beta = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
    scale, shift = torch.randn(B, C, device="cuda"), torch.randn(B, C, device="cuda")

    def ref():
        u = F.group_norm(x.float(), GROUPS, gamma, beta, 1e-5)
        return F.silu(u * (scale[:, :, None, None] + 1) + shift[:, :, None, None]).to(dtype)

    nbytes = 2 * x.numel() * x.element_size()
    return ref, lambda: group_norm_silu(x, gamma, beta, GROUPS, 1e-5, scale, shift), nbytes


def _gc_case(B, C, S, dtype):
    from dsd_fast.ops.triton.gated_conv1x1 import gated_conv1x1
    g = torch.randn(B, C, S, S, device="cuda", dtype=dtype)
    x = torch.randn(B, C, S, S, device="cuda", dtype=dtype)
    weight = (torch.randn(C, C, 1, 1, device="cuda") / C ** 0.5).to(dtype)
    bias = torch.randn(C, device="cuda", dtype=dtype)

    def ref():
        return F.conv2d(g, weight, bias) * x

    nbytes = 3 * x.numel() * x.element_size() + weight.numel() * weight.element_size()
    return ref, lambda: gated_conv1x1(g, weight, bias, x), nbytes


CASES = {
    "ff_parser": _ff_case,
    "group_norm_silu": _gn_case,
    "group_norm_silu_nhwc": lambda B, C, S, dtype: _gn_case(B, C, S, dtype, channels_last=True),
    "gated_conv1x1": _gc_case,
}


def _tolerance(dtype):
    # float32: DFT-as-matmul vs cuFFT, both float32 (see tests/ops/test_triton_kernels.py);
    # cuDNN may use TF32 for the reference conv, hence 1e-3 there too.
    return (1e-3, 1e-3) if dtype == torch.float32 else (2e-2, 2e-2)


def check_all(names, channels, sizes, dtype) -> bool:
    ok = True
    for name in names:
        for C in channels:
            for S in sizes:
                ref, fast, _ = CASES[name](BATCH, C, S, dtype)
                want, got = ref().float(), fast().float()
                atol, rtol = _tolerance(dtype)
                if not torch.allclose(got, want, atol=atol, rtol=rtol):
                    err = (got - want).abs().max().item()
                    print(f"MISMATCH {name} C={C} S={S} {dtype}: max |err| {err:.3g}")
                    ok = False
    return ok


def _peak_gbps() -> float | None:
    """Theoretical DRAM bandwidth from the device properties, when torch exposes them."""
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9        # DDR: two transfers per clock


def run(names, channels, sizes, dtype) -> None:
    import triton.testing

    peak = _peak_gbps()
    print(f"device: {torch.cuda.get_device_name(0)}; batch {BATCH}; {dtype}; "
          f"peak DRAM {'%.0f GB/s' % peak if peak else 'unknown'}")
    print(f"{'kernel':<22}{'C':>5}{'size':>6}{'eager ms':>11}{'triton ms':>11}{'speed-up':>10}"
          f"{'GB/s':>9}{'% peak':>8}")
    for name in names:
        for C in channels:
            for S in sizes:
                ref, fast, nbytes = CASES[name](BATCH, C, S, dtype)
                t_ref = triton.testing.do_bench(ref)
                t_fast = triton.testing.do_bench(fast)
                gbps = nbytes / (t_fast * 1e-3) / 1e9
                frac = f"{100 * gbps / peak:7.1f}%" if peak else f"{'-':>8}"
                print(f"{name:<22}{C:>5}{S:>6}{t_ref:>11.4f}{t_fast:>11.4f}"
                      f"{t_ref / t_fast:>9.2f}x{gbps:>9.0f}{frac}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--channels", nargs="+", type=int, default=list(CHANNELS))
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args(argv)
    reason = _ready()
    if reason:
        print(f"bench_gpu: skipped: {reason}")
        return 0
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    torch.manual_seed(0)
    if not check_all(args.kernels, args.channels, args.sizes, dtype):
        print("bench_gpu: results do not match the references; not timing")
        return 1
    print("All results match. Starting benchmarks.")
    run(args.kernels, args.channels, args.sizes, dtype)
    return 0


# ----------------------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:      # the script needs no pytest
    pytest = None

if pytest is not None:
    _reason = _ready()
    _params = pytest.mark.parametrize("C,S", [(c, s) for c in CHANNELS for s in SIZES],
                                      ids=lambda v: str(v))

    def _bench(benchmark, fn):
        def timed():
            fn()
            torch.cuda.synchronize()      # time the kernel, not its enqueue
        timed()                           # compile and build tables outside the timing
        benchmark(timed)

    @pytest.mark.skipif(_reason is not None, reason=_reason or "")
    @pytest.mark.parametrize("impl", ["eager", "triton"])
    @pytest.mark.parametrize("name", list(CASES))
    @_params
    def test_bench(benchmark, name, impl, C, S):
        torch.manual_seed(0)
        ref, fast, _ = CASES[name](BATCH, C, S, torch.float32)
        benchmark.group = f"{name} C={C} S={S}"
        _bench(benchmark, ref if impl == "eager" else fast)


if __name__ == "__main__":
    sys.exit(main())
