"""The C++ kernels' builds side by side: AVX-512 vs AVX2 vs portable (vs the PyTorch twins).

    python bench/bench_isa.py [--rounds 5] [--threads 1]

A process loads one build of the kernels (DSD_FAST_ISA, dsd_fast/ops/cpu.py), so each build
is timed in its own child process; the builds take turns, round after round, so that the
machine's drift (shared cores) falls on all of them alike. Each child times every op at
the bundled model's and the isic2018 network's shapes (batch 5 = one ensemble) and the
fast denoiser forward of the bundled config, each the median of 7 calls; the table shows the
median over rounds and the ratio to the AVX2 build (the previous, build-time baseline). The
"twins" column runs with DSD_FAST_DISABLE_EXT=1: every op, in the forward too, is its
pure-PyTorch twin.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, time
import torch
from dsd_fast import ops, get_config
from dsd_fast.families.dermosegdiff.fast import build_fast_model
from dsd_fast.families.dermosegdiff.reference import DermoSegDiff
torch.set_num_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g)

def med(fn, n=7):
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

cases = {}
for b, c, h, w, groups in [(5, 16, 64, 64, 4), (5, 128, 32, 32, 8)]:
    x, gm, bt, sc, sh = r(b, c, h, w), r(c), r(c), r(b, c), r(b, c)
    cases[f"group_norm_silu {b}x{c}x{h}x{w}"] = (ops.group_norm_silu,
                                                 (x, gm, bt, groups, 1e-5, sc, sh))
for b, cg, cx, h, w in [(5, 16, 16, 64, 64), (5, 128, 128, 32, 32)]:
    args = (r(b, cg, h, w), r(cx, cg, 1, 1), r(cx), r(b, cx, h, w))
    cases[f"gated_conv1x1 {b}x{cg}->{cx}x{h}x{w}"] = (ops.gated_conv1x1, args)
for b, c, h, w in [(5, 16, 64, 64), (5, 128, 16, 16)]:
    args = (r(b, c, h, w), r(384, c, 1, 1), r(c, 128, 1, 1), r(c))
    cases[f"linear_attention {b}x{c}x{h}x{w}"] = (ops.linear_attention, args)
for b, c, h, w in [(5, 16, 64, 64), (5, 64, 32, 32)]:
    args = (r(b, c, h, w), r(c, h, w // 2 + 1, 2))
    cases[f"ff_parser {b}x{c}x{h}x{w}"] = (ops.ff_parser, args)
out = {"isa": ops.ISA if ops.AVAILABLE else None}
with torch.no_grad():
    for name, (op, args) in cases.items():
        out[name] = med(lambda: op(*args))     # the twin itself when the build is disabled
    cfg = get_config("default")
    fast = build_fast_model(DermoSegDiff(cfg).eval())
    s = cfg.image_size
    x, img, t = r(5, 1, s, s), torch.rand(5, 3, s, s, generator=g), torch.randint(0, 250, (5,))
    out["fast denoiser forward, default config"] = med(lambda: fast(x, img, t))
print("RESULT " + json.dumps(out))
"""


def run_child(isa: str | None, threads: int) -> dict:
    env = dict(os.environ)
    if isa:
        env["DSD_FAST_ISA"] = isa
    else:                                   # every op runs its PyTorch twin
        env["DSD_FAST_DISABLE_EXT"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(threads)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"child for {isa or 'twins'} failed:\n{proc.stdout}\n{proc.stderr}")
    res = json.loads(line[0][len("RESULT "):])
    if res["isa"] != isa:
        raise RuntimeError(f"asked for the {isa} build, the child loaded {res['isa']}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-twins", action="store_true", help="skip the PyTorch twins' column")
    args = ap.parse_args(argv)
    from dsd_fast.ops.cpu import supported_isas
    isas = supported_isas()
    columns = isas + ([] if args.no_twins else ["twins"])
    runs: dict[str, list[dict]] = {c: [] for c in columns}
    for k in range(args.rounds):
        for c in columns:
            runs[c].append(run_child(None if c == "twins" else c, args.threads))
        print(f"round {k + 1}/{args.rounds} done", file=sys.stderr)
    names = [n for n in runs[columns[0]][0] if n != "isa"]
    base = "avx2" if "avx2" in columns else columns[0]
    print(f"\n{args.threads} thread(s), median of {args.rounds} rounds, ms "
          f"(ratio: {base} time / this build's time)\n")
    print("| op (shape) | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for n in names:
        med = {c: statistics.median(r[n] for r in runs[c]) for c in columns}
        cells = [f"{1e3 * med[c]:.2f} ({med[base] / med[c]:.2f}x)" for c in columns]
        print(f"| {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
