"""`dsd-fast serve --ray`: the same app on a local Ray instance answers a request with
segment()'s mask (Ray Serve's replica and @serve.batch in the path)."""
from __future__ import annotations

import base64
import socket

import numpy as np
import pytest

from dsd_fast.serve.engine import mask_from_png

from serve_support import SKIP_WITHOUT_SERVE, SMALL
from serve_support import pipeline, reference, sample_paths, server  # noqa: F401 (fixtures)

pytestmark = SKIP_WITHOUT_SERVE
requests = pytest.importorskip("requests", reason="the tests' HTTP client (test extra)")

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'dsd_fast[serve,ray]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_serve_answers_one_request(sample_paths, reference):
    import ray
    from ray import serve

    from dsd_fast.serve import ServeConfig
    from dsd_fast.serve.ray_serve import deploy
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    config = ServeConfig(models=("default",), host="127.0.0.1", port=_free_port(),
                         threads=1, warmup=False)      # Ray's start-up is slow enough
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                     log_to_driver=False)
            break
        except Exception as e:
            # Ray gives its raylet a fixed 30 s to register; on a loaded machine that can
            # pass once. Anything else, or a second time, fails the test.
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
    try:
        url = deploy(config, replicas=1)
        path = sample_paths[0]
        r = requests.post(url + "/v1/segment", timeout=120, data=SMALL,
                          files={"file": (path.name, path.read_bytes())})
        assert r.status_code == 200, r.text
        body = r.json()
        assert np.array_equal(mask_from_png(base64.b64decode(body["png"]["mask"])),
                              reference(path).mask)
        assert body["batch_images"] == 1
        bad = requests.post(url + "/v1/segment", timeout=60, files={"file": ("x", b"")})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "empty_upload"
        assert requests.get(url + "/readyz", timeout=30).json()["status"] == "ready"
    finally:
        serve.shutdown()
        ray.shutdown()
