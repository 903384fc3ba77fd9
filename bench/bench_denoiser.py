"""Denoiser forward at batch 5 (one ensemble): fast vs reference eager vs torch.compile(reference).

    python bench/bench_denoiser.py [--configs default,w32,isic2018] [--repeats 7]
    python bench/bench_denoiser.py --configs default,w32 --layouts 5   (NCHW vs channels_last)
    python bench/bench_denoiser.py --configs default,isic2018 --winograd 3   (direct vs Winograd)
    pytest bench/bench_denoiser.py --benchmark-only          (pytest-benchmark)

All variants run side by side in one process on the same inputs, after a parity check;
figures are medians and ratios from that one run (this machine is shared and noisy). For the
published isic2018 config it also prints achieved GFLOP/s (FLOPs counted by
torch.utils.flop_counter) against a float32 matmul peak measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dsd_fast import DermoSegDiff, ModelConfig, get_config, ops
from dsd_fast.families.dermosegdiff.fast import build_fast_model

BATCH = 5
CONFIGS = {
    "default": get_config("default"),
    # a 32-wide, 4-level config at 128 x 128
    "w32": ModelConfig(32, 32, (1, 2, 4, 4), (1, 2, 4, 4), 8, ff_parser=True, image_size=128),
    "isic2018": get_config("isic2018"),
}


def inputs(cfg, batch=BATCH):
    gen = torch.Generator().manual_seed(0)
    s = cfg.image_size
    return (torch.randn(batch, 1, s, s, generator=gen), torch.rand(batch, 3, s, s, generator=gen),
            torch.randint(0, 250, (batch,), generator=gen))


def median_time(fn, repeats: int) -> float:
    fn()                                   # warm-up (allocations, oneDNN primitive caches)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = median_time(lambda: a @ b, repeats)
    return 2 * n ** 3 / t / 1e9


def forward_gflop(model, args) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(*args)
    return fc.get_total_flops() / 1e9


def run(config_names, repeats: int, with_compile: bool = True) -> list[dict]:
    torch.set_flush_denormal(True)
    rows = []
    for name in config_names:
        cfg = CONFIGS[name]
        torch.manual_seed(0)
        ref = DermoSegDiff(cfg).eval()
        fast = build_fast_model(ref)
        args = inputs(cfg)
        with torch.no_grad():
            a, b = ref(*args), fast(*args)
        err = ((a - b).abs().max() / a.abs().max()).item()
        assert err <= 1e-4, f"{name}: fast and reference disagree ({err:.2e} of scale)"
        r = int(repeats if name != "isic2018" else max(3, repeats // 2))
        with torch.no_grad():
            t_ref = median_time(lambda: ref(*args), r)
            t_fast = median_time(lambda: fast(*args), r)
            t_comp = None
            if with_compile:
                comp = torch.compile(ref)
                t_comp = median_time(lambda: comp(*args), r)
        row = {"config": name, "size": cfg.image_size, "ref_s": t_ref, "fast_s": t_fast,
               "compiled_ref_s": t_comp, "speedup": t_ref / t_fast, "rel_err": err}
        if name == "isic2018":
            gflop = forward_gflop(ref, args)
            peak = matmul_peak_gflops()
            row.update(gflop=gflop, fast_gflops=gflop / t_fast, peak_gflops=peak,
                       fraction_of_peak=gflop / t_fast / peak)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


# Two builds of the fast model compared by --layouts and --winograd: (label, kwargs) each.
VARIANTS = {
    "layouts": (("NCHW", {"channels_last": False, "winograd": False}),
                ("NHWC", {"channels_last": True, "winograd": False})),
    "winograd": (("direct", {"channels_last": True, "winograd": False}),
                 ("Winograd", {"channels_last": True, "winograd": True})),
}


def side_by_side(config_names, rounds: int, repeats: int, what: str) -> None:
    """Two builds of the fast model (VARIANTS[what]), side by side: `rounds` alternations of
    `repeats` forwards each, medians over all; outputs compared first."""
    torch.set_flush_denormal(True)
    (name_a, kw_a), (name_b, kw_b) = VARIANTS[what]
    print(f"{'config':<9}{name_a + ' ms':>13}{name_b + ' ms':>13}{'ratio':>8}")
    for name in config_names:
        cfg = CONFIGS[name]
        torch.manual_seed(0)
        ref = DermoSegDiff(cfg).eval()
        model_a, model_b = build_fast_model(ref, **kw_a), build_fast_model(ref, **kw_b)
        args = inputs(cfg)
        with torch.no_grad():
            a, b = model_a(*args), model_b(*args)
            err = ((a - b).abs().max() / a.abs().max()).item()
            assert err <= 1e-4, f"{name}: the two builds disagree ({err:.2e} of scale)"
            times = ([], [])
            for _ in range(rounds):
                for i, model in enumerate((model_a, model_b)):
                    times[i].append(median_time(lambda: model(*args), repeats))
        t_a, t_b = statistics.median(times[0]), statistics.median(times[1])
        print(f"{name:<9}{t_a * 1e3:13.1f}{t_b * 1e3:13.1f}{t_a / t_b:7.2f}x", flush=True)


def format_row(r: dict) -> str:
    comp = f"{r['compiled_ref_s'] * 1e3:9.1f}" if r["compiled_ref_s"] else f"{'-':>9}"
    s = (f"{r['config']:<9}{r['size']:>5}{r['ref_s'] * 1e3:10.1f}{comp}{r['fast_s'] * 1e3:9.1f}"
         f"{r['speedup']:8.2f}x")
    if "fast_gflops" in r:
        s += (f"   {r['gflop']:.0f} GFLOP/forward, fast {r['fast_gflops']:.0f} GFLOP/s = "
              f"{100 * r['fraction_of_peak']:.0f}% of matmul peak {r['peak_gflops']:.0f}")
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", default="default,w32,isic2018")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--layouts", type=int, default=0, metavar="ROUNDS",
                   help="instead: the fast model in NCHW vs channels_last, ROUNDS alternations")
    p.add_argument("--winograd", type=int, default=0, metavar="ROUNDS",
                   help="instead: the fast model's 3x3 convolutions direct vs Winograd")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, C++ ops: {ops.AVAILABLE}")
    for what in ("layouts", "winograd"):
        if getattr(args, what):
            side_by_side(args.configs.split(","), getattr(args, what), args.repeats, what)
            return
    print(f"{'config':<9}{'size':>5}{'ref ms':>10}{'compile':>9}{'fast ms':>9}{'fast/ref':>9}")
    run(args.configs.split(","), args.repeats, not args.no_compile)


# ----------------------------------------------------------------------------- pytest-benchmark
def _bench(benchmark, name, variant):
    import pytest
    if name == "isic2018" and variant != "fast":
        pytest.skip("isic2018 reference timing: use the script (minutes per round)")
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    ref = DermoSegDiff(cfg).eval()
    model = build_fast_model(ref) if variant == "fast" else ref
    args = inputs(cfg)
    with torch.no_grad():
        benchmark.pedantic(lambda: model(*args), rounds=5, warmup_rounds=1)


def test_denoiser_default_reference(benchmark):
    _bench(benchmark, "default", "reference")


def test_denoiser_default_fast(benchmark):
    _bench(benchmark, "default", "fast")


def test_denoiser_w32_reference(benchmark):
    _bench(benchmark, "w32", "reference")


def test_denoiser_w32_fast(benchmark):
    _bench(benchmark, "w32", "fast")


if __name__ == "__main__":
    main()
