"""The one prepared GPU check: run it once on a machine with an NVIDIA GPU.

    bash bench/gpu_check.sh OUT_DIR        # installs with --no-deps, then runs this
    python bench/gpu_check.py --out OUT_DIR [--budget-s 420]

Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.log:
  environment   dsd-fast doctor's report (versions, GPU, which kernel serves each op)
  tests         the GPU tests (Triton kernels compiled, CUDA graphs, guards) via pytest
  ops           per-op parity and time, Triton vs torch (bench/bench_gpu.py)
  denoiser      one forward at batch 5 and 40: reference eager, fast (fused), fast replayed
                as a CUDA graph, for the bundled default config and the published isic2018
  segment       segment() images/s, bundled default and isic2018 (random weights), float32
                and bfloat16
  families      every family on CUDA (reference vs fast, graph-captured DDIM), and the
                bundled model's bfloat16 masks against float32 on the PH2 val images
Each section records its seconds and stops being started once --budget-s is spent. On a
machine without a GPU every GPU section is recorded as skipped, with the reason (this is
what the CPU test of this script checks).
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def section_environment() -> dict:
    from dsd_fast.cli.doctor import run
    buf = io.StringIO()
    code = run(out=buf, timing=False)
    return {"doctor_exit": code, "report": buf.getvalue()}


def section_tests() -> dict:
    files = ["tests/ops/test_triton_kernels.py", "tests/ops/test_guard.py",
             "tests/diffusion/test_graph.py", "tests/ops/test_cpu_ops.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return {"exit": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:],
            "output_tail": proc.stdout[-4000:] + proc.stderr[-2000:]}


def section_ops() -> dict:
    proc = subprocess.run([sys.executable, "bench/bench_gpu.py", "--sizes", "16", "64",
                           "--channels", "64"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    return {"exit": proc.returncode, "output": proc.stdout[-6000:] + proc.stderr[-2000:]}


def _timed(fn, reps: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1000


def section_denoiser() -> dict:
    import dsd_fast
    from dsd_fast.families.dermosegdiff import DERMOSEGDIFF
    rows = []
    for name in ("default", "isic2018"):
        cfg = dsd_fast.get_config(name)
        net = dsd_fast.build_model(cfg).eval().cuda()
        fast = DERMOSEGDIFF.fast_model_for(net)
        for batch in (5, 40):
            s = cfg.image_size
            x = torch.randn(batch, 1, s, s, device="cuda")
            img = torch.rand(batch, 3, s, s, device="cuda")
            t = torch.full((batch,), 100, device="cuda", dtype=torch.long)
            row = {"config": name, "batch": batch}
            with torch.no_grad():
                row["reference_ms"] = _timed(lambda: net(x, img, t))
                row["fast_ms"] = _timed(lambda: fast(x, img, t))
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    fast(x, img, t)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = fast(x, img, t)
                row["fast_graph_ms"] = _timed(graph.replay)
                row["graph_matches_eager"] = bool(torch.allclose(out, fast(x, img, t),
                                                                 rtol=1e-4, atol=1e-4))
            rows.append(row)
        torch.cuda.empty_cache()
    return {"rows": rows}


def section_segment() -> dict:
    import dsd_fast
    rows = []
    for name in ("default", "isic2018"):
        pipe = dsd_fast.pipeline_from_network(dsd_fast.build_model(dsd_fast.get_config(name))
                                            .eval()).to("cuda")
        images = [torch.rand(3, 288, 383) for _ in range(8)]
        pipe.segment(images[:2], steps=2, ensemble=5, batch_size=2)      # warm-up, capture
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe.segment(images, steps=25, ensemble=5, batch_size=8)
        torch.cuda.synchronize()
        rows.append({"config": name, "dtype": "float32",
                     "images_per_s": len(images) / (time.perf_counter() - t0)})
        pipe.segment(images[:2], steps=2, ensemble=5, batch_size=2, precision="bf16")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe.segment(images, steps=25, ensemble=5, batch_size=8, precision="bf16")
        torch.cuda.synchronize()
        rows.append({"config": name, "dtype": "bfloat16",
                     "images_per_s": len(images) / (time.perf_counter() - t0)})
    return {"rows": rows}


def section_families() -> dict:
    """Every family on CUDA: small random-weight networks, reference vs fast (graph-captured
    DDIM) and fast float32 vs bfloat16 masks; the bundled model's float32 vs bfloat16 masks on
    PH2 val images."""
    import numpy as np

    import dsd_fast
    from dsd_fast.families import find_config
    from dsd_fast.families.diffseg.pipeline import DiffSegPipeline
    from dsd_fast.metrics import dice
    rows = []
    images = [torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for name in ("tiny_ff", "msd_tiny_sc", "msd_official_tiny"):
        fam, cfg = find_config(name)
        torch.manual_seed(0)
        pipe = dsd_fast.pipeline_from_network(fam.build_reference(cfg).eval()).to("cuda")
        ref = pipe.segment(images, steps=5, ensemble=3, backend="reference")
        fast = pipe.segment(images, steps=5, ensemble=3, backend="fast")
        bf16 = pipe.segment(images, steps=5, ensemble=3, backend="fast", precision="bf16")
        rows.append({"config": name, "family": fam.name,
                     "max_prob_diff": max(float(np.abs(a.probability - b.probability).max())
                                          for a, b in zip(ref, fast)),
                     # random weights: masks can be near-empty, so Dice of two empty masks
                     # counts as 1 (metrics.dice's convention)
                     "bf16_vs_fp32_dice_min": min(float(dice(a.mask, b.mask))
                                                  for a, b in zip(fast, bf16))})
    torch.manual_seed(0)
    fam, cfg = find_config("diffseg_tiny")
    ds = DiffSegPipeline(fam.build_reference(cfg).eval(), fam.build_reference(cfg).eval())
    ds = ds.to("cuda")
    out = ds.segment(images, ensemble=3)
    rows.append({"config": "diffseg_tiny", "family": "diffseg", "masks": len(out)})
    ph2 = ROOT.parent / "shared" / "data" / "ph2"
    agreement = "skipped: ../shared/data/ph2 not found"
    if ph2.exists():
        ids = (ph2 / "val.txt").read_text().split()
        paths = [ph2 / "images" / f"{i}.png" for i in ids]
        pipe = dsd_fast.load().to("cuda")
        f32 = pipe.segment(paths, noise_keys=list(range(len(paths))))
        b16 = pipe.segment(paths, noise_keys=list(range(len(paths))), precision="bf16")
        d = [float(dice(a.mask, b.mask)) for a, b in zip(f32, b16)]
        agreement = {"images": len(d), "dice_min": min(d), "dice_median": float(np.median(d))}
    return {"rows": rows, "bf16_vs_fp32_bundled_ph2_val": agreement}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=420)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    gpu = torch.cuda.is_available()
    result = {"gpu": torch.cuda.get_device_name(0) if gpu else None,
              "torch": torch.__version__, "sections": {}}
    t_start = time.perf_counter()
    for name, fn, needs_gpu in (("environment", section_environment, False),
                                ("tests", section_tests, True), ("ops", section_ops, True),
                                ("denoiser", section_denoiser, True),
                                ("segment", section_segment, True),
                                ("families", section_families, True)):
        if needs_gpu and not gpu:
            result["sections"][name] = {"skipped": "no CUDA GPU visible to torch"}
            continue
        if time.perf_counter() - t_start > args.budget_s:
            result["sections"][name] = {"skipped": f"time budget of {args.budget_s} s spent"}
            continue
        t0 = time.perf_counter()
        try:
            with redirect_stdout(log):
                data = fn()
            data["seconds"] = round(time.perf_counter() - t0, 1)
            result["sections"][name] = data
        except Exception as e:          # a failing section is a finding: record and go on
            result["sections"][name] = {"error": f"{type(e).__name__}: {e}",
                                        "seconds": round(time.perf_counter() - t0, 1)}
        print(f"[{name}] {json.dumps(result['sections'][name])[:2000]}", file=log)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (args.out / "gpu_check.log").write_text(log.getvalue())
    failed = [n for n, s in result["sections"].items()
              if "error" in s or s.get("exit") not in (None, 0) or s.get("doctor_exit", 0)]
    print(f"gpu_check: {'GPU ' + result['gpu'] if gpu else 'no GPU'}; sections "
          f"{', '.join(result['sections'])}; failed: {', '.join(failed) or 'none'}; "
          f"{result['seconds']} s; {args.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
