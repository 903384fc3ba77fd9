"""The real server on loopback: answers equal segment()'s, concurrent requests batched,
bad uploads refused with 4xx JSON while the server keeps serving, the page's files local."""
from __future__ import annotations

import base64
import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from dsd_fast.serve.engine import mask_from_png

from serve_support import SKIP_WITHOUT_SERVE, SMALL
from serve_support import pipeline, reference, sample_paths, server  # noqa: F401 (fixtures)

pytestmark = SKIP_WITHOUT_SERVE
requests = pytest.importorskip("requests", reason="the tests' HTTP client (test extra)")

TIMEOUT = 60


def post(url, path=None, data=None, fields=None, **kw):
    files = {"file": (path.name, path.read_bytes(), "image/png")} if path is not None else \
        {"file": ("upload.png", data, "application/octet-stream")}
    return requests.post(url + "/v1/segment", files=files, data={**SMALL, **(fields or {})},
                         timeout=TIMEOUT, **kw)


def png_array(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im)


def test_one_request_equals_segment(server, sample_paths, reference):
    path = sample_paths[0]
    r = post(server, path)
    assert r.status_code == 200, r.text
    body = r.json()
    ref = reference(path)
    mask = mask_from_png(base64.b64decode(body["png"]["mask"]))
    assert mask.shape == ref.mask.shape == (body["height"], body["width"])
    assert ref.mask.any() and (~ref.mask).any()          # a real mask, not all or nothing
    assert np.array_equal(mask, ref.mask)
    prob = png_array(body["png"]["probability"]).astype(np.float64) / 65535
    assert np.abs(prob - ref.probability).max() <= 1 / 65535 + 1e-6
    assert body["area_pixels"] == int(ref.mask.sum())
    assert body["mean_uncertainty"] == pytest.approx(float(ref.std.mean()), rel=1e-5)
    assert png_array(body["png"]["overlay"]).shape == ref.mask.shape + (3,)
    assert png_array(body["png"]["uncertainty"]).shape == ref.mask.shape + (3,)
    assert body["options"] == {"model": "default", "steps": 2, "ensemble": 2,
                               "spacing": "leading", "seed": 0, "postprocess": "largest",
                               "tta": False, "fusion": "mean"}
    assert set(body["timings_ms"]) >= {"decode", "queue", "segment", "encode", "total"}


def test_mask_png_on_request(server, sample_paths, reference):
    path = sample_paths[1]
    raw = requests.post(server + "/v1/segment?format=png&steps=2&ensemble=2",
                        data=path.read_bytes(), headers={"Content-Type": "image/png"},
                        timeout=TIMEOUT)
    accept = post(server, path, headers={"Accept": "image/png"})
    for r in (raw, accept):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        assert np.array_equal(mask_from_png(r.content), reference(path).mask)
        assert int(r.headers["x-area-pixels"]) == int(reference(path).mask.sum())


def test_concurrent_requests_are_batched_and_equal_segment(server, sample_paths, reference):
    # 12 requests from 6 threads: 3 images x 2 seeds, each seed's requests batchable
    jobs = [(p, seed) for seed in (0, 7) for p in sample_paths for _ in range(2)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda j: post(server, j[0], fields={"seed": j[1]}), jobs))
    batched = 0
    for (path, seed), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["options"]["seed"] == seed
        assert np.array_equal(mask_from_png(base64.b64decode(body["png"]["mask"])),
                              reference(path, seed).mask), (path.name, seed)
        batched = max(batched, body["batch_images"])
    assert batched > 1, "no two concurrent requests shared a segment() call"
    text = requests.get(server + "/metrics", timeout=TIMEOUT).text
    count = float(re.search(r"^dsd_fast_batch_images_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^dsd_fast_batch_images_sum (\S+)$", text, re.M).group(1))
    assert total > count                       # some batch held more than one image


def _big_png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 80, 60)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name, upload, fields, status, code", [
    ("empty", b"", {}, 400, "empty_upload"),
    ("text", b"this is not an image\n" * 10, {}, 415, "unsupported_type"),
    ("pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", {}, 415,
     "unsupported_type"),
    ("truncated", "TRUNCATED", {}, 400, "corrupt_image"),
    ("pixels", "BIG", {}, 413, "too_many_pixels"),
    ("bytes", b"\x89PNG" + bytes(3 * 1024 * 1024), {}, 413, "upload_too_large"),
    ("model", "GOOD", {"model": "../../etc/passwd"}, 422, "unknown_model"),
    ("steps", "GOOD", {"steps": "0"}, 422, "bad_option"),
    ("steps-text", "GOOD", {"steps": "many"}, 422, "bad_option"),
    ("spacing", "GOOD", {"spacing": "sideways"}, 422, "bad_option"),
    ("field", "GOOD", {"stpes": "3"}, 400, "unknown_field"),
])
def test_bad_uploads_get_4xx_and_server_keeps_serving(server, sample_paths, name, upload,
                                                      fields, status, code):
    good = sample_paths[0].read_bytes()
    upload = {"TRUNCATED": good[:len(good) // 3], "BIG": _big_png(1001, 1000),
              "GOOD": good}.get(upload, upload) if isinstance(upload, str) else upload
    r = post(server, data=upload, fields=fields)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["status"] == status and err["message"]
    assert "/tmp" not in err["message"] and "dsd-serve-" not in err["message"]
    assert post(server, sample_paths[0]).status_code == 200     # still serving


def test_wrong_content_type_and_no_file(server, sample_paths):
    r = requests.post(server + "/v1/segment", data=b"{}", timeout=TIMEOUT,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_type"
    r = requests.post(server + "/v1/segment", files={"steps": (None, "2")}, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_upload"
    two = {"file": sample_paths[0].read_bytes()}
    r = requests.post(server + "/v1/segment", timeout=TIMEOUT,
                      files=[("file", ("a.png", two["file"])), ("file", ("b.png", two["file"]))])
    assert r.status_code == 400 and "one image per request" in r.json()["error"]["message"]


def test_state_endpoints(server, pipeline):
    assert requests.get(server + "/healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    assert requests.get(server + "/readyz", timeout=TIMEOUT).json()["status"] == "ready"
    models = requests.get(server + "/v1/models", timeout=TIMEOUT).json()
    assert models["default"] == "default"
    (m,) = models["models"]
    assert m["family"] == "dermosegdiff" and "non-commercial" in m["terms"]
    assert m["metadata"]["sampler_defaults"]["ensemble"] == 25
    # the schedule summarised, not its table of betas
    assert m["metadata"]["schedule"] == {"kind": "table", "T": pipeline.schedule.T}
    assert models["limits"]["max_pixels"] == 1_000_000
    text = requests.get(server + "/metrics", timeout=TIMEOUT)
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    for family in ("requests_total", "errors_total", "request_duration_seconds",
                   "batch_images", "queue_length", "running_jobs", "ready"):
        assert f"# TYPE dsd_fast_{family} " in text.text
    # every sample line is NAME{labels} VALUE with a number
    for line in text.text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[^}]*\})? [0-9.e+-]+|.+ \+Inf', line) or \
                float(line.rsplit(" ", 1)[1]) >= 0, line


def test_page_docs_and_spec_are_local(server):
    index = requests.get(server + "/", timeout=TIMEOUT)
    assert index.status_code == 200 and "default-src 'self'" in \
        index.headers["content-security-policy"]
    spec = requests.get(server + "/openapi.json", timeout=TIMEOUT).json()
    assert "/v1/segment" in spec["paths"] and "/v1/models" in spec["paths"]
    docs = requests.get(server + "/docs", timeout=TIMEOUT)
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    for name in ("app.js", "style.css", "docs.js"):
        r = requests.get(f"{server}/static/{name}", timeout=TIMEOUT)
        assert r.status_code == 200 and r.content
    for text in (index.text, docs.text, *(requests.get(f"{server}/static/{n}",
                                                       timeout=TIMEOUT).text
                                          for n in ("app.js", "style.css", "docs.js"))):
        assert not re.search(r"(src|href)=\"(https?:)?//", text)      # nothing from elsewhere
        assert not re.search(r"https?://|@import|url\(", text)   # no address at all
    for path in ("/static/..%2f..%2fsetup.py", "/static/index.html", "/static/../app.py",
                 "/etc/passwd"):
        r = requests.get(server + path, timeout=TIMEOUT)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


def test_uploads_leave_no_file_behind(server, sample_paths):
    import glob
    import tempfile
    pattern = f"{tempfile.gettempdir()}/dsd-serve-*"      # limits.decode_image's folders
    before = set(glob.glob(pattern))
    good = sample_paths[0].read_bytes()
    assert post(server, sample_paths[0]).status_code == 200
    assert post(server, data=good[:len(good) // 2]).status_code == 400     # corrupt
    assert set(glob.glob(pattern)) - before == set()
