"""Where a request's job runs: this process (LocalBackend) or Ray Serve (ray_serve.py).

The app (app.py) only needs: start() (load models; `ready` after it), check_capacity()
(429 before any decoding when the queue is full), submit(job, timeout) -> payload, the
queue gauges, and close(). LocalBackend loads the catalog's pipelines in a thread (the
event loop answers /healthz meanwhile), warms them up, and runs jobs through a Batcher.
"""
from __future__ import annotations

import asyncio
import logging

from .batching import Batcher
from .engine import Engine, Job
from .limits import ApiError

log = logging.getLogger("dsd_fast.serve")


class LocalBackend:
    def __init__(self, catalog, config, metrics=None):
        self.catalog, self.config, self.metrics = catalog, config, metrics
        self.state = "starting"            # starting -> ready | failed; -> shutting_down
        self.error: str | None = None
        self.batcher = Batcher(self._run, max_batch=config.max_batch,
                               max_wait_s=config.batch_wait_ms / 1e3,
                               max_queue=config.max_queue,
                               on_batch=metrics.batch if metrics is not None else None)
        self.engine: Engine | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def queue_length(self) -> int:
        return self.batcher.queue_length

    @property
    def running(self) -> int:
        return self.batcher.running

    def _run(self, jobs: list[Job]) -> list:
        return self.engine.run(jobs)

    def _load(self) -> Engine:
        engine = Engine(self.catalog.load_pipelines(self.config.device),
                        threads=self.config.threads)
        if self.config.warmup:
            engine.warmup()
        return engine

    async def start(self) -> None:
        """Load and warm up every model in the worker's thread; the batcher starts
        taking jobs when that is done."""
        self.batcher.start()
        loop = asyncio.get_running_loop()
        try:
            self.engine = await loop.run_in_executor(self.batcher._executor, self._load)
        except Exception as e:            # a model that does not load: /readyz says why
            log.exception("loading the models failed")
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            return
        if self.state == "starting":
            self.state = "ready"
            log.info("ready: %s", ", ".join(self.catalog.names))

    def check_capacity(self) -> None:
        if self.state != "ready":
            raise not_ready(self.state, self.error)
        if self.batcher.queue_length >= self.config.max_queue:
            n = self.batcher.retry_after_s()
            raise ApiError(429, "queue_full", f"{self.batcher.queue_length} requests are "
                           f"waiting, this server's limit; retry in {n} s",
                           {"Retry-After": str(n)})

    async def submit(self, job: Job, timeout_s: float):
        return await self.batcher.submit(job, timeout_s)

    async def close(self) -> None:
        self.state = "shutting_down"
        await self.batcher.close(drain_s=self.config.request_timeout_s)


def not_ready(state: str, error: str | None = None) -> ApiError:
    if state == "failed":
        return ApiError(503, "not_ready", f"the models failed to load: {error}")
    if state == "shutting_down":
        return ApiError(503, "shutting_down", "the server is shutting down",
                        {"Retry-After": "5"})
    return ApiError(503, "not_ready", "the models are still loading; retry shortly",
                    {"Retry-After": "2"})
