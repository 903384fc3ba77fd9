"""The HTTP app of `dsd-fast serve` (FastAPI on Starlette; uvicorn or Ray Serve runs it).

    GET  /                 the web page (page/: no CDN, works offline)
    POST /v1/segment       an image (multipart field `file`, or the raw image body) and
                           segment() options -> JSON (PNGs base64) or the mask PNG
    GET  /v1/models        the models, their metadata and terms, and the server's limits
    GET  /healthz          the process answers (liveness)
    GET  /readyz           the models are loaded and warm (readiness; 503 before/after)
    GET  /metrics          Prometheus text format (metrics.py)
    GET  /openapi.json     the OpenAPI spec; GET /docs renders it from local files only

FastAPI's own /docs page loads Swagger UI from a CDN, which an offline or locked-down
machine cannot reach; /docs here is a small local page (page/docs.html) that lists the
spec's operations, and /openapi.json is the full machine-readable spec for any tool.
No route opens a file named by the request: the page's files are read once, here, from a
fixed list, and models are chosen by name from the catalog.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .catalog import ModelCatalog
from .config import ServeConfig
from .engine import Job
from .limits import FORM_OVERHEAD, ApiError, decode_image, parse_multipart, read_body, \
    too_large
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Metrics
from .options import OPTION_FIELDS, parse_options

PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript",
              "style.css": "text/css", "docs.html": "text/html; charset=utf-8",
              "docs.js": "text/javascript"}
# The page may load nothing but this server's own files and the images it makes.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                "connect-src 'self'; object-src 'none'; base-uri 'none'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp", "image/webp",
                   "application/octet-stream")
ROUTE_NAMES = {"/": "page", "/static/{name}": "page", "/docs": "docs",
               "/openapi.json": "openapi", "/healthz": "healthz", "/readyz": "readyz",
               "/metrics": "metrics", "/v1/models": "models", "/v1/segment": "segment"}
DECODES_AT_ONCE = 2        # decoded images in memory before they reach the bounded queue

SEGMENT_DOC = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "PNG, JPEG, TIFF, BMP or WebP image"},
                "model": {"type": "string", "description": "a name from GET /v1/models "
                          "(default: the first)"},
                "steps": {"type": "integer", "minimum": 1},
                "ensemble": {"type": "integer", "minimum": 1},
                "seed": {"type": "integer", "minimum": 0, "default": 0},
                "spacing": {"type": "string", "enum": ["leading", "trailing"]},
                "postprocess": {"type": "string", "enum": ["auto", "none", "fill", "largest",
                                                          "largest_fill"]},
                "tta": {"type": "boolean", "default": False},
                "fusion": {"type": "string", "enum": ["mean", "staple", "mean-squared"]},
                "format": {"type": "string", "enum": ["json", "png"], "default": "json"}}}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
    "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"},
                    "description": "as the form field of the same name"}
                   for n in OPTION_FIELDS + ("format",)],
    "responses": {
        "200": {"description": "JSON: mask and maps as base64 PNG, area, mean "
                "uncertainty, timings (a model of several classes: the label map, and "
                "`classes`, each with its probability and uncertainty maps); or, with "
                "format=png or Accept: image/png, the mask PNG (several classes: the label "
                "map, X-Classes naming its labels 1, 2, ...)",
                "content": {"application/json": {}, "image/png": {}}},
        "400": {"description": "empty, corrupt or malformed upload"},
        "413": {"description": "upload over the byte or pixel limit"},
        "415": {"description": "not an image this server reads"},
        "422": {"description": "an option out of range or an unknown model"},
        "429": {"description": "queue full (Retry-After)"},
        "503": {"description": "not ready or shutting down"},
        "504": {"description": "not answered within the request timeout"}}}


def _page_files() -> dict[str, bytes]:
    page = resources.files("dsd_fast.serve") / "page"
    return {name: (page / name).read_bytes() for name in PAGE_FILES}


def _json_payload(payload):
    """The payload with every PNG (bytes, at any depth: a class's maps too) as base64."""
    if isinstance(payload, bytes):
        return base64.b64encode(payload).decode("ascii")
    if isinstance(payload, dict):
        return {k: _json_payload(v) for k, v in payload.items()}
    if isinstance(payload, list):
        return [_json_payload(v) for v in payload]
    return payload


def create_app(config: ServeConfig | None = None, backend=None,
               catalog: ModelCatalog | None = None) -> FastAPI:
    """The app for `config`; `backend` defaults to a LocalBackend (this process, batched).
    The backend's models load when the app starts (its lifespan), not here."""
    config = config or ServeConfig()
    catalog = catalog or ModelCatalog(config.models)
    metrics = Metrics()
    if backend is None:
        from .backend import LocalBackend
        backend = LocalBackend(catalog, config, metrics)
    page = _page_files()
    decodes = asyncio.Semaphore(DECODES_AT_ONCE)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        starting = asyncio.get_running_loop().create_task(backend.start())
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for in-flight requests; what is
            # still queued finishes (or gets 503) here.
            await backend.close()
            if not starting.done():
                starting.cancel()

    app = FastAPI(title="dsd_fast segmentation service", version="1",
                  description="Lesion masks with per-pixel uncertainty from diffusion "
                  "segmenters (dsd_fast).", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.backend, app.state.catalog, app.state.metrics = backend, catalog, metrics
    metrics.gauge("queue_length", "Requests waiting for the worker.",
                  lambda: backend.queue_length)
    metrics.gauge("running_jobs", "Requests in the batch running now.",
                  lambda: backend.running)
    metrics.gauge("ready", "1 when the models are loaded and warm.",
                  lambda: int(backend.ready))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        metrics.error(exc.code)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.error(code)
        return JSONResponse(ApiError(exc.status_code, code, str(exc.detail)).body(),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # a bug: the client gets JSON like every other error, the log the traceback
        metrics.error("internal_error")
        return JSONResponse(ApiError(500, "internal_error", "the server failed on this "
                                     "request; see its log").body(), status_code=500)

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = ROUTE_NAMES.get(getattr(route, "path", None), "other")
        metrics.request(endpoint, response.status_code, time.perf_counter() - started)
        return response

    # ------------------------------------------------------------------ the page
    def page_response(name: str) -> Response:
        return Response(page[name], media_type=PAGE_FILES[name], headers=PAGE_HEADERS)

    @app.get("/", include_in_schema=False)
    async def index():
        return page_response("index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return page_response("docs.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in PAGE_FILES or name.endswith(".html"):
            raise ApiError(404, "not_found", f"no page file {name!r}")
        return page_response(name)

    # ------------------------------------------------------------------ service state
    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: models loaded and warm")
    async def readyz():
        if backend.ready:
            return {"status": "ready", "models": catalog.names}
        body = {"status": backend.state, "models": catalog.names}
        if getattr(backend, "error", None):
            body["error"] = backend.error
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    @app.get("/metrics", summary="Prometheus metrics (text format 0.0.4)")
    async def prometheus():
        return Response(metrics.render(), media_type=METRICS_TYPE)

    @app.get("/v1/models", summary="The models, their metadata and terms, and the limits")
    async def models():
        return {"default": catalog.default_name, "models": catalog.describe(),
                "limits": {"max_upload_bytes": config.max_upload_bytes,
                           "max_pixels": config.max_pixels, "max_steps": config.max_steps,
                           "max_ensemble": config.max_ensemble,
                           "request_timeout_s": config.request_timeout_s},
                "batching": {"max_batch": config.max_batch,
                             "batch_wait_ms": config.batch_wait_ms,
                             "max_queue": config.max_queue}}

    # ------------------------------------------------------------------ segmentation
    @app.post("/v1/segment", summary="Segment one image", openapi_extra=SEGMENT_DOC)
    async def segment(request: Request):
        started = time.perf_counter()
        ctype = request.headers.get("content-type", "")
        body = await read_body(request, config.max_upload_bytes + FORM_OVERHEAD)
        fields = dict(request.query_params)
        media = ctype.split(";")[0].strip().lower()
        if media == "multipart/form-data":
            data, form = parse_multipart(body, ctype)
            fields.update(form)
        elif media in RAW_IMAGE_TYPES:
            data = body
        else:
            raise ApiError(415, "unsupported_type", "send multipart/form-data with the image "
                           "in the field 'file', or the image itself as the body with an "
                           f"image/* Content-Type (got {media or 'no Content-Type'!r})")
        if data is not None and len(data) > config.max_upload_bytes:
            raise too_large(config.max_upload_bytes)
        opts, fmt = parse_options(fields, catalog, config)
        accept = request.headers.get("accept", "")
        if "format" not in fields and "image/png" in accept and "json" not in accept:
            fmt = "png"
        backend.check_capacity()                # 429 / 503 before decoding anything
        async with decodes:
            image = await run_in_threadpool(decode_image, data, config.max_pixels)
        decoded = time.perf_counter()
        payload = await backend.submit(Job(image, opts, maps=fmt == "json"),
                                       config.request_timeout_s)
        payload["model"] = opts.model
        timings = payload["timings_ms"]
        timings["decode"] = (decoded - started) * 1e3
        timings["total"] = (time.perf_counter() - started) * 1e3
        if fmt == "png":
            # several classes: the label map (the API's mask), its classes in a header
            classes = payload.get("classes")
            extra = {"X-Classes": ",".join(c["name"] for c in classes)} if classes else {}
            return Response(payload["png"]["labels" if classes else "mask"],
                            media_type="image/png", headers={
                "X-Model": opts.model, "X-Area-Pixels": str(payload["area_pixels"]),
                "X-Mean-Uncertainty": f"{payload['mean_uncertainty']:.6g}",
                "X-Batch-Images": str(payload["batch_images"]),
                "X-Total-Ms": f"{timings['total']:.1f}", **extra})
        return JSONResponse(_json_payload(payload))

    return app
