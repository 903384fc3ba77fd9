"""`dsd-fast serve --ray`: the same app on Ray Serve, for clusters.

Two deployments:
    ServeIngress   the FastAPI app of app.py (routes, limits, metrics, the page), built on
                   its replica by `__serve_build_asgi_app__`, with a RayBackend instead of
                   the local batcher: each request's job goes to the segmenter's handle.
    Segmenter      `--replicas N` replicas, each loading the models once; its `run_batch`
                   is a Ray Serve `@serve.batch` method, so Ray batches the concurrent
                   jobs (max batch and wait from the config) and Engine.run makes one
                   segment() call per set of options, as the local batcher does.
Ray Serve restarts replicas that die and balances requests over them; its queue bound
(`max_queued_requests`) turns into this app's 429 with Retry-After.
"""
from __future__ import annotations

import asyncio
import signal
import sys
import threading

from .backend import not_ready
from .config import ServeConfig
from .limits import ApiError

RAY_SERVE_HINT = "pip install 'dsd_fast[serve,ray]' (Ray Serve)"
APP_NAME = "dsd_fast"


def import_serve():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ImportError(f"--ray needs Ray Serve: {RAY_SERVE_HINT}") from None
    return ray, serve


class RayBackend:
    """The app's backend on Ray: jobs go to the Segmenter deployment's handle."""

    def __init__(self, segmenter, config: ServeConfig):
        self.segmenter, self.config = segmenter, config
        self.state, self.error = "starting", None
        self.running = 0                  # this ingress replica's requests in flight
        self.queue_length = 0             # Ray Serve holds the queue

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def start(self) -> None:
        self.state = "ready"              # Ray routes to the segmenter once it is healthy

    def check_capacity(self) -> None:
        if self.state != "ready":
            raise not_ready(self.state, self.error)

    async def submit(self, job, timeout_s: float):
        from ray.serve.exceptions import BackPressureError
        self.running += 1
        response = None
        try:
            response = self.segmenter.run_batch.remote(job)
            out = await asyncio.wait_for(response, timeout_s)
        except BackPressureError as e:
            n = max(1, round(getattr(e, "retry_after_s", None) or 1))
            raise ApiError(429, "queue_full", "the segmenter replicas' queues are full; "
                           f"retry in {n} s", {"Retry-After": str(n)}) from None
        except asyncio.TimeoutError:
            if response is not None:
                response.cancel()
            raise ApiError(504, "timeout", f"no result within this server's limit of "
                           f"{timeout_s:g} s (queue wait and segmentation)") from None
        finally:
            self.running -= 1
        if isinstance(out, ApiError):
            raise out
        return out

    async def close(self) -> None:
        self.state = "shutting_down"


def build_app(config: ServeConfig, replicas: int = 1):
    """The Ray Serve application (ingress bound to the segmenter) for `serve.run`."""
    _, serve = import_serve()
    threads = config.threads or 1

    @serve.deployment(name="Segmenter", num_replicas=replicas,
                      max_ongoing_requests=config.max_batch * 2,
                      max_queued_requests=config.max_queue,
                      ray_actor_options={"num_cpus": threads,
                                         "num_gpus": 0 if config.device == "cpu" else 1})
    class Segmenter:
        def __init__(self, config_dict: dict):
            from .catalog import ModelCatalog
            from .engine import Engine
            cfg = ServeConfig.from_dict(config_dict)
            self.engine = Engine(ModelCatalog(cfg.models).load_pipelines(cfg.device),
                                 threads=cfg.threads or 1)
            if cfg.warmup:
                self.engine.warmup()
            self.run_batch.set_max_batch_size(cfg.max_batch)
            self.run_batch.set_batch_wait_timeout_s(cfg.batch_wait_ms / 1e3)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.015)
        async def run_batch(self, jobs: list) -> list:
            # off the replica's event loop, so it keeps collecting the next batch
            return await asyncio.to_thread(self.engine.run, jobs)

    @serve.deployment(name="ServeIngress", num_replicas=1, ray_actor_options={"num_cpus": 0})
    @serve.ingress()
    class ServeIngress:
        def __init__(self, config_dict: dict, segmenter):
            self.config = ServeConfig.from_dict(config_dict)
            self.segmenter = segmenter

        def __serve_build_asgi_app__(self):
            from .app import create_app
            from .catalog import ModelCatalog
            return create_app(self.config, backend=RayBackend(self.segmenter, self.config),
                              catalog=ModelCatalog(self.config.models))

    cfg = config.to_dict()
    return ServeIngress.bind(cfg, Segmenter.bind(cfg))


def deploy(config: ServeConfig, replicas: int = 1) -> str:
    """Start Ray Serve's HTTP proxy on config.host:port (Ray must be initialised) and
    deploy the app; returns its base URL once the replicas are up."""
    _, serve = import_serve()
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config, replicas), name=APP_NAME, route_prefix="/")
    return f"http://{config.host}:{config.port}"


def serve_on_ray(config: ServeConfig, address: str = "local", replicas: int = 1) -> int:
    """`dsd-fast serve --ray [ADDRESS]`: join (or start) Ray, deploy, serve until SIGINT /
    SIGTERM, then delete the app (and stop the Ray instance this call started)."""
    try:
        ray, serve = import_serve()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = not ray.is_initialized()
    if started:
        kw = dict(include_dashboard=False, configure_logging=False)
        ray.init(**kw) if address == "local" else ray.init(address=address, **kw)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = deploy(config, replicas)
        print(f"dsd-fast serve: {url} on Ray Serve ({replicas} segmenter "
              f"replica{'s' if replicas > 1 else ''}); Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()
        if started:
            ray.shutdown()
    return 0
