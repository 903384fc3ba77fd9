"""Fixtures of the serve tests: a real server on 127.0.0.1 (an ephemeral port, uvicorn in a
thread) with the bundled default model and small sampler settings (2 steps x 2 members)
so a request takes well under a second.

A module, not a conftest.py: tests elsewhere import tests/conftest.py as `conftest`, and a
second conftest.py collected before them would take that name. Each test module imports
the fixtures it uses from here and sets `pytestmark = SKIP_WITHOUT_SERVE`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parents[1] / "dsd_fast" / "samples"
SMALL = {"steps": 2, "ensemble": 2}          # what every request of these tests asks for
# The serve extra and the tests' HTTP client; without them every test here is skipped.
MISSING = [m for m in ("fastapi", "uvicorn", "python_multipart", "requests")
           if importlib.util.find_spec(m) is None]
SKIP_WITHOUT_SERVE = pytest.mark.skipif(
    bool(MISSING), reason=f"needs pip install 'dsd_fast[serve,test]' ({', '.join(MISSING)} "
    "missing)")


@pytest.fixture(scope="session")
def sample_paths() -> list[Path]:
    return sorted(SAMPLES.glob("*.png"))


@pytest.fixture(scope="session")
def pipeline():
    import dsd_fast
    return dsd_fast.load("default")


@pytest.fixture(scope="session")
def reference(pipeline, sample_paths):
    """{(file name, seed): segment()'s result for that file alone at SMALL settings}."""
    cache = {}

    def get(path: Path, seed: int = 0):
        key = (path.name, seed)
        if key not in cache:
            cache[key] = pipeline.segment([str(path)], seed=seed, **SMALL)[0]
        return cache[key]
    return get


@pytest.fixture(scope="module")
def server():
    """Base URL of a running server (models: default; limits small enough to test)."""
    from dsd_fast.serve import ServeConfig
    from dsd_fast.serve.server import running_server
    config = ServeConfig(models=("default",), port=0, threads=1, batch_wait_ms=40,
                         max_upload_bytes=2 * 1024 * 1024, max_pixels=1_000_000,
                         request_timeout_s=60)
    with running_server(config) as url:
        yield url
