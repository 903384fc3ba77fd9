"""Running the app on uvicorn: in the foreground (`dsd-fast serve`) or in a thread (tests,
bench/bench_serve.py).

Graceful shutdown (SIGINT / SIGTERM, uvicorn's handlers): the listening socket closes,
requests in flight finish (each is bounded by the request timeout, after which it gets
504), then the app's lifespan closes the batcher, which runs what is still queued or
answers it 503. uvicorn's own graceful timeout is set past the request timeout so it never
cuts a request off mid-answer.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time

from .config import ServeConfig

GRACE_S = 10.0           # beyond the request timeout, for the answers to be written


def uvicorn_config(app, config: ServeConfig, log_level: str = "info"):
    import uvicorn
    return uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                          lifespan="on", timeout_graceful_shutdown=config.request_timeout_s
                          + GRACE_S, limit_concurrency=config.max_queue * 4 + 32,
                          server_header=False)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that after a graceful shutdown on SIGINT / SIGTERM the
        process exits 0 (uvicorn re-raises the signal, so its exit status says "killed")."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {sig: signal.signal(sig, self.handle_exit)
                   for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)
    return Server


def serve_forever(config: ServeConfig, log_level: str = "info") -> int:
    """`dsd-fast serve`: run until SIGINT / SIGTERM; 0 after a clean shutdown."""
    import ipaddress
    import logging

    from .app import create_app
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if not loopback:
        logging.getLogger("dsd_fast.serve").warning(
            "listening on %s: the service has no authentication; anyone who can reach this "
            "address can use it (put it behind a proxy that authenticates)", config.host)
    server = _server_class()(uvicorn_config(create_app(config), config, log_level))
    server.run()
    return 0 if server.started else 1


@contextlib.contextmanager
def running_server(config: ServeConfig, app=None, ready_timeout_s: float = 120.0,
                   log_level: str = "warning"):
    """Start the app on uvicorn in a thread (port 0: an ephemeral port), wait until
    /readyz says ready, yield the base URL ("http://127.0.0.1:PORT"); shut down on exit."""
    import json
    import urllib.error
    import urllib.request

    import uvicorn

    from .app import create_app
    app = app or create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config, log_level))
    thread = threading.Thread(target=server.run, name="dsd-serve-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (port in use?)")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://{config.host}:{port}"
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as e:
                state = json.loads(e.read() or b"{}")
                if state.get("status") == "failed":
                    raise RuntimeError(f"the server's models failed to load: {state}") \
                        from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready within {ready_timeout_s} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=config.request_timeout_s + GRACE_S + 5)
