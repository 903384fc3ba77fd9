"""The README's speed table from one saved `make bench` run (pytest-benchmark JSON).

    make bench                                   times and saves a run under .benchmarks/
    python bench/bench_table.py [RUN.json]       its table (default: the newest saved run)

One row per family (throughput_cases.py): the median of one denoiser forward at batch 5 for
the reference, the fast model (float32 and bfloat16) and the peers installed in that run,
the fast model's speed-up over the best peer, and segment() per image at the case's
setting. Every figure of a row comes from the same run, so ratios compare; the line above
the table says which machine, threads and vector path ran it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / ".benchmarks"
ENGINES = (("reference", "test_reference"), ("fast", "test_fast"),
           ("fast bf16", "test_fast_bf16"), ("ONNX Runtime", "test_onnxruntime"),
           ("OpenVINO", "test_openvino-f32"), ("OpenVINO bf16", "test_openvino-bf16"))
PEERS = ("ONNX Runtime", "OpenVINO")          # the float32 peers the fast model is held to


def newest_run(folder: Path = BENCH_DIR) -> Path:
    runs = sorted(folder.glob("*/*.json"), key=lambda p: p.name)
    if not runs:
        raise SystemExit(f"no saved run under {folder}: run `make bench` first")
    return runs[-1]


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:,.1f}"


def rows(run: dict) -> list[dict]:
    """Per family: {family, weights, <engine>: median seconds, segment, setting}."""
    by_family: dict[str, dict] = {}
    for b in run["benchmarks"]:
        test, _, family = b["name"].partition("[")
        family = family.rstrip("]")
        if test == "test_openvino":          # parametrized by precision: "<family>-f32"
            family, _, precision = family.rpartition("-")
            test = f"{test}-{precision}"
        row = by_family.setdefault(family, {"family": family,
                                            "weights": b["extra_info"].get("weights", "")})
        median = b["stats"]["median"]
        if test == "test_segment":
            info = b["extra_info"]
            row["segment"] = median
            row["setting"] = (f"{info['ensemble']} members x {info['steps']} "
                              f"{info.get('spacing') or ''} DDIM steps".replace("  ", " ")
                              if info.get("steps") else f"{info['ensemble']} draws")
        for label, name in ENGINES:
            if test == name:
                row[label] = median
    return list(by_family.values())


def table(run: dict) -> str:
    m = run["machine_info"]
    cpu = m.get("cpu", {}).get("brand_raw", "?")
    head = (f"{cpu}, {m.get('torch_threads', '?')} torch threads, vector path "
            f"{m.get('dsd_fast_cpu_isa', '?')}, torch {m.get('torch', '?')}; medians; one "
            "forward at batch 5 in ms, segment() in s per image")
    lines = [head, "",
             "| family (weights) | reference | fast | fast bf16 | ONNX Runtime | OpenVINO "
             "| OpenVINO bf16 | fast / best float32 peer | segment() per image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows(run):
        peers = [r[p] for p in PEERS if r.get(p) is not None]
        speedup = (f"{min(peers) / r['fast']:.2f}x" if peers and r.get("fast") else "")
        seg = (f"{r['segment']:.2f} s ({r['setting']})" if r.get("segment") is not None
               else "")
        lines.append(f"| {r['family']} ({r['weights']}) | "
                     + " | ".join(_ms(r.get(label)) for label, _ in ENGINES)
                     + f" | {speedup} | {seg} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", type=Path, default=None)
    args = ap.parse_args(argv)
    path = args.run or newest_run()
    print(f"{path.name}:", file=sys.stderr)
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
