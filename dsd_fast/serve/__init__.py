"""`dsd-fast serve`: segmentation as an HTTP service, with a web page.

    config.py    ServeConfig: models, host/port, limits, batching
    catalog.py   the models by name (never by a request's path), metadata and terms
    limits.py    uploads read and decoded in memory, with size/pixel/type checks; ApiError
    options.py   a request's segment() options, checked and resolved (the batching key)
    engine.py    runs a batch of jobs: one segment() call per set of options, then encodes
    outputs.py   a result -> PNGs (mask, probability, uncertainty, overlay) and numbers
    batching.py  the local batcher: bounded queue, bounded wait, one worker thread
    backend.py   LocalBackend: loads the models, feeds the batcher
    metrics.py   Prometheus text format
    app.py       the FastAPI app (routes, errors, the page, /docs offline)
    server.py    uvicorn: foreground (`dsd-fast serve`) or in a thread (tests, bench)
    ray_serve.py the same app on Ray Serve (its replicas and @serve.batch)
    command.py   the command line's arguments and run

Needs the `serve` extra: pip install 'dsd_fast[serve]' (FastAPI, uvicorn, python-multipart).
"""
from .config import ServeConfig

SERVE_HINT = "pip install 'dsd_fast[serve]' (FastAPI, uvicorn, python-multipart)"


def create_app(config: ServeConfig | None = None, **kwargs):
    """The FastAPI app (app.create_app); imports FastAPI only when called."""
    from .app import create_app as _create_app
    return _create_app(config, **kwargs)


__all__ = ["ServeConfig", "create_app", "SERVE_HINT"]
