"""`dsd-fast serve`: its arguments (added to the command line's parser by cli/main.py) and
its run, locally on uvicorn or on Ray Serve (--ray)."""
from __future__ import annotations

import argparse
import sys

from .config import DEFAULT_MODELS, ServeConfig

DESCRIPTION = (
    "Serve segmentation over HTTP: POST /v1/segment (an image -> mask, probability and "
    "uncertainty maps as PNG, area, timings), GET /v1/models, /healthz, /readyz, /metrics "
    "(Prometheus), /openapi.json and /docs, and a web page at / that works offline. "
    "Concurrent requests with the same options share the network's forwards. Bound to "
    "127.0.0.1 unless --host says otherwise. Needs pip install 'dsd_fast[serve]'.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="NAME|PATH", dest="models",
                   help="a bundled model's name or a model file; repeatable, the first is "
                   f"the default for requests (default: {', '.join(DEFAULT_MODELS)}). "
                   "Requests choose among these by name only")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; "
                   "0.0.0.0 exposes the service to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the network (default: torch's)")
    p.add_argument("--device", default="cpu",
                   help="where the networks run: cpu (default), cuda or cuda:N")
    p.add_argument("--max-batch", type=int, default=ServeConfig.max_batch,
                   help="most images in one batched segment() call (default "
                   f"{ServeConfig.max_batch}; a batch's requests are answered together, so "
                   "raise it only where a batch runs faster per image, e.g. a GPU)")
    p.add_argument("--batch-wait-ms", type=float, default=15.0,
                   help="how long the first request of a batch waits for others with the "
                   "same options (default 15)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting beyond this get 429 with Retry-After (default 64)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds before a request gets 504 (default 120)")
    p.add_argument("--max-upload-mb", type=float, default=32.0,
                   help="largest upload in MiB (default 32)")
    p.add_argument("--max-pixels", type=int, default=16_000_000,
                   help="largest image in pixels (default 16000000)")
    p.add_argument("--max-steps", type=int, default=250, help="most DDIM steps a request "
                   "may ask for (default 250)")
    p.add_argument("--max-ensemble", type=int, default=64,
                   help="most ensemble members a request may ask for (default 64)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="serve on Ray Serve: alone, start a Ray instance on this machine; "
                   "with an address, join that cluster (auto, ray://host:10001). Needs "
                   "pip install 'dsd_fast[serve,ray]' with ray[serve]")
    p.add_argument("--replicas", type=int, default=1,
                   help="with --ray: segmenter replicas, each loading the models (default 1)")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))


def config_from_args(args) -> ServeConfig:
    return ServeConfig(
        models=tuple(args.models or DEFAULT_MODELS), host=args.host, port=args.port,
        threads=args.threads, device=args.device, max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue, request_timeout_s=args.timeout,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
        max_steps=args.max_steps, max_ensemble=args.max_ensemble)


def run(args) -> int:
    """The `dsd-fast serve` command: 0 after a clean shutdown, 2 for a usage error."""
    try:
        config = config_from_args(args)
        if args.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
        from .catalog import ModelCatalog
        ModelCatalog(config.models)                # bad names and files fail here, clearly
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        from . import SERVE_HINT
        print(f"error: serve needs {e.name}: {SERVE_HINT}", file=sys.stderr)
        return 2
    if args.ray is not None:
        from .ray_serve import serve_on_ray
        return serve_on_ray(config, address=args.ray, replicas=args.replicas)
    from .server import serve_forever
    return serve_forever(config, log_level=args.log_level)
