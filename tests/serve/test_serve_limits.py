"""The batcher and the limits that need a slow worker: 429 with Retry-After when the queue
is full, 504 after the request timeout, graceful shutdown of a real `dsd-fast serve`
process. The slow worker is a stand-in engine that blocks until the test releases it, so
these tests do not depend on how fast this machine runs the network."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dsd_fast.serve import ServeConfig
from dsd_fast.serve.backend import LocalBackend
from dsd_fast.serve.batching import Batcher
from dsd_fast.serve.engine import Job, mask_from_png
from dsd_fast.serve.limits import ApiError
from dsd_fast.serve.options import RequestOptions

from serve_support import SKIP_WITHOUT_SERVE, SMALL
from serve_support import pipeline, reference, sample_paths, server  # noqa: F401 (fixtures)

pytestmark = SKIP_WITHOUT_SERVE
requests = pytest.importorskip("requests", reason="the tests' HTTP client (test extra)")

REPO = Path(__file__).resolve().parents[2]
OPTS = RequestOptions(model="default", steps=2, ensemble=2, spacing="leading")


class GatedEngine:
    """Engine.run's stand-in: records each batch, blocks until `gate` is set."""

    def __init__(self):
        self.gate = threading.Event()
        self.batches: list[list[Job]] = []

    def run(self, jobs):
        self.batches.append(jobs)
        assert self.gate.wait(30), "the test never released the engine"
        return [{"seed": j.options.seed, "batch": len(jobs), "png": {"mask": b""}}
                for j in jobs]


def job(seed=0) -> Job:
    return Job(image=None, options=RequestOptions(**{**OPTS.__dict__, "seed": seed}))


def run_async(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_batcher_groups_same_options_within_the_wait():
    engine = GatedEngine()
    engine.gate.set()

    async def main():
        b = Batcher(engine.run, max_batch=3, max_wait_s=0.2, max_queue=10)
        b.start()
        outs = await asyncio.gather(*(b.submit(job(s), 10) for s in (0, 0, 1, 0, 0)))
        await b.close()
        return outs
    outs = run_async(main())
    assert [o["seed"] for o in outs] == [0, 0, 1, 0, 0]       # each gets its own answer
    sizes = sorted(len(batch) for batch in engine.batches)
    assert sizes == [1, 1, 3]        # seed 0: 3 (max_batch) then 1; seed 1 alone
    for batch in engine.batches:
        assert len({j.options for j in batch}) == 1            # never mixes options


def test_batcher_queue_full_timeout_and_close():
    engine = GatedEngine()

    async def main():
        b = Batcher(engine.run, max_batch=1, max_wait_s=0, max_queue=2)
        b.start()
        first = asyncio.ensure_future(b.submit(job(0), 10))     # runs, blocks the worker
        while not engine.batches:
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(b.submit(job(s), 10)) for s in (1, 2)]
        await asyncio.sleep(0.05)
        assert b.queue_length == 2
        with pytest.raises(ApiError) as full:
            await b.submit(job(3), 10)
        assert full.value.status == 429 and int(full.value.headers["Retry-After"]) >= 1
        late = asyncio.ensure_future(b.submit(job(4), 0.1))   # room after a cancel? no:
        with pytest.raises(ApiError):                          # queue still full
            await late
        queued[1].cancel()                                     # a client that went away
        await asyncio.sleep(0.05)
        assert b.queue_length == 1                             # left the queue
        slow = asyncio.ensure_future(b.submit(job(5), 0.2))
        with pytest.raises(ApiError) as timed_out:
            await slow
        assert timed_out.value.status == 504
        assert b.queue_length == 1                             # the timed-out one left too
        engine.gate.set()
        closing = asyncio.ensure_future(b.close(drain_s=10))
        assert (await first)["seed"] == 0 and (await queued[0])["seed"] == 1   # drained
        await closing
        with pytest.raises(ApiError) as after:
            await b.submit(job(6), 1)
        assert after.value.status == 503
    run_async(main())
    assert [j.options.seed for batch in engine.batches for j in batch] == [0, 1]


class GatedBackend(LocalBackend):
    def _load(self):
        self.gated = GatedEngine()
        return self.gated


def test_http_429_and_504_with_a_slow_worker(sample_paths):
    from dsd_fast.serve.app import create_app
    from dsd_fast.serve.catalog import ModelCatalog
    from dsd_fast.serve.server import running_server
    config = ServeConfig(models=("default",), port=0, max_queue=1, max_batch=1,
                         batch_wait_ms=0, request_timeout_s=1.5)
    catalog = ModelCatalog(config.models)
    backend = GatedBackend(catalog, config)
    app = create_app(config, backend=backend, catalog=catalog)
    image = sample_paths[0].read_bytes()

    def post(seed):
        return requests.post(url + "/v1/segment", files={"file": ("a.png", image)},
                             data={**SMALL, "seed": seed}, timeout=30)
    with running_server(config, app=app) as url, ThreadPoolExecutor(3) as pool:
        running = pool.submit(post, 0)
        while not backend.gated.batches:
            time.sleep(0.01)
        queued = pool.submit(post, 1)
        while backend.queue_length < 1:
            time.sleep(0.01)
        refused = post(2)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        for r in (running.result(), queued.result()):          # nobody released the engine
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        backend.gated.gate.set()
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        metrics = requests.get(url + "/metrics", timeout=10).text
        assert 'dsd_fast_errors_total{code="queue_full"} 1' in metrics
        assert 'dsd_fast_errors_total{code="timeout"} 2' in metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_graceful_shutdown_finishes_the_request_in_flight(sample_paths, reference):
    """SIGTERM while a request runs: it is answered in full, then the process exits 0."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dsd_fast.cli", "serve", "--model",
                             "default", "--port", str(port), "--threads", "1",
                             "--log-level", "warning"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        path = sample_paths[2]
        with ThreadPoolExecutor(1) as pool:
            # 25 steps x 4 members: long enough (~1 s or more) to be caught mid-flight
            answer = pool.submit(requests.post, url + "/v1/segment", timeout=60,
                                 files={"file": (path.name, path.read_bytes())},
                                 data={"steps": 25, "ensemble": 4})
            while "dsd_fast_running_jobs 1" not in requests.get(url + "/metrics",
                                                                 timeout=5).text:
                assert not answer.done(), "answered before the shutdown could be tested"
                time.sleep(0.005)
            proc.send_signal(signal.SIGTERM)
            r = answer.result()
        assert r.status_code == 200, r.text
        assert mask_from_png(__import__("base64").b64decode(r.json()["png"]["mask"])).shape \
            == reference(path).mask.shape
        assert proc.wait(timeout=60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_command_refuses_an_unknown_model_before_starting():
    r = subprocess.run([sys.executable, "-m", "dsd_fast.cli", "serve", "--model", "nope",
                        "--port", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "model 'nope': no such file, and not a bundled model" in r.stderr
    assert "Traceback" not in r.stderr
