"""`dsd-fast serve` under load: requests/s and p50/p99 latency at concurrency 1, 4 and 16,
with request batching on and off, against one request at a time.

    python bench/bench_serve.py [--requests 32] [--rounds 1] [--cpu 1] [--max-batch 4]
                                [--steps 5 --ensemble 5 --spacing trailing] [--json out.json]

Each server is a real `dsd-fast serve` process on 127.0.0.1 (an ephemeral port), pinned to
CPU `--cpu` with one torch thread (taskset; this project's machine runs a training on core
0), the bundled default model. "batched" is the server's batcher (up to --max-batch images
per segment() call, default the server's, 15 ms wait); "unbatched" the same server with
--max-batch 1, i.e. one request's image at a time whatever the concurrency. The client
sends the bundled sample images in turn from `concurrency` threads, each request a
multipart upload answered with the JSON (all four PNGs), --requests per row after
`concurrency` warm-up requests; the latency is the client's wall time per request (with
32 requests p99 is about the slowest). Both servers run side by side (the idle one costs
nothing) and the rows alternate between them. The sampler setting defaults to the bundled
model's recommended fast one (5 members x 5 trailing steps), so a row takes seconds, not
minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from dsd_fast.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "dsd_fast" / "samples").glob("*.png"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `dsd-fast serve` subprocess pinned to one CPU; stopped with SIGTERM."""

    def __init__(self, cpu: int, max_batch: int, max_queue: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "dsd_fast.cli", "serve", "--model", "default",
               "--port", str(self.port), "--threads", "1", "--max-batch", str(max_batch),
               "--max-queue", str(max_queue), "--log-level", "warning"]
        if cpu >= 0:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not become ready")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def one_request(url: str, image: bytes, name: str, options: dict) -> tuple[float, int]:
    started = time.perf_counter()
    r = requests.post(url + "/v1/segment", files={"file": (name, image)}, data=options,
                      timeout=600)
    seconds = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return seconds, r.json()["batch_images"]


def load_level(url: str, concurrency: int, n: int, options: dict) -> tuple[float, list]:
    """(wall seconds, [(latency s, images in its batch)]) of n requests from `concurrency`
    threads, after `concurrency` warm-up requests."""
    images = [(p.read_bytes(), p.name) for p in SAMPLES]

    def run(count: int, offset: int):
        with ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(one_request, url, *images[(offset + i) % len(images)],
                                   options) for i in range(count)]
            return [f.result() for f in futures]
    run(concurrency, 0)                                   # warm-up (not measured)
    started = time.perf_counter()
    out = run(n, 1)
    return time.perf_counter() - started, out


def summarise(mode: str, concurrency: int, walls: list, outs: list) -> dict:
    lat = np.array([s for s, _ in outs])
    return {"mode": mode, "concurrency": concurrency, "requests": len(outs),
            "seconds": sum(walls), "requests_per_s": len(outs) / sum(walls),
            "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
            "mean_batch": float(np.mean([b for _, b in outs]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=32,
                    help="measured requests per row and round")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds; each runs every row once, modes alternating, so a drift "
                    "of the machine's speed falls on both modes alike")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--spacing", default="trailing")
    ap.add_argument("--cpu", type=int, default=1, help="CPU the server is pinned to (-1: none)")
    ap.add_argument("--max-batch", type=int, default=ServeConfig.max_batch,
                    help="the batched server's --max-batch (default: the server's default)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    options = {"steps": args.steps, "ensemble": args.ensemble, "spacing": args.spacing}
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = {"unbatched": 1, "batched": args.max_batch}
    servers = {}
    results = {(m, c): ([], []) for c in levels for m in modes}
    try:
        for mode, max_batch in modes.items():
            servers[mode] = Server(args.cpu, max_batch, max_queue=max(64, 2 * max(levels)))
        for rnd in range(args.rounds):
            for c in levels:
                for mode in modes:
                    wall, out = load_level(servers[mode].url, c, args.requests, options)
                    results[mode, c][0].append(wall)
                    results[mode, c][1].extend(out)
                    row = summarise(mode, c, [wall], out)
                    print(f"round {rnd + 1} {mode:9s} concurrency {c:2d}: "
                          f"{row['requests_per_s']:.2f} req/s, p50 {row['p50_s']:.2f} s, "
                          f"p99 {row['p99_s']:.2f} s, mean batch {row['mean_batch']:.1f}",
                          flush=True)
    finally:
        for server in servers.values():
            server.stop()
    rows = [summarise(m, c, *results[m, c]) for m in modes for c in levels]
    base = next(r for r in rows if r["mode"] == "unbatched" and r["concurrency"] == 1)
    print(f"\nserver pinned to CPU {args.cpu}, 1 thread; bundled default model, "
          f"{args.ensemble} members x {args.steps} {args.spacing} steps; {args.requests} "
          f"requests per row x {args.rounds} round(s)\n")
    print("| server | concurrency | requests/s | p50 latency | p99 latency | images per "
          "batch | vs one at a time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['concurrency']} | {r['requests_per_s']:.2f} | "
              f"{r['p50_s']:.2f} s | {r['p99_s']:.2f} s | {r['mean_batch']:.1f} | "
              f"{r['requests_per_s'] / base['requests_per_s']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"options": options, "cpu": args.cpu,
                                               "rounds": args.rounds, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
