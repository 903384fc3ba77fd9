"""`dsd-fast serve` with a model of several classes (#35 item 3): the JSON answer holds the
label map segment() gives (0 background, k the k-th class), each class's probability and
uncertainty maps, areas and colour, and an overlay outlining each class in its colour;
`format=png` answers the label map. A binary model beside it answers as it always has."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from conftest import make_model
from serve_support import SKIP_WITHOUT_SERVE, SMALL
from serve_support import sample_paths  # noqa: F401 (fixture)

pytestmark = SKIP_WITHOUT_SERVE
requests = pytest.importorskip("requests", reason="the tests' HTTP client (test extra)")

TIMEOUT = 60
CLASSES = ("disc", "cup")


def two_class_model_file(folder) -> str:
    """A tiny DermoSegDiff of two classes (config tiny_2class), weights moved off their
    initial values so its maps are not flat, saved with class names."""
    import dsd_fast
    pipe = dsd_fast.pipeline_from_network(make_model("tiny_2class", seed=3))
    pipe.class_names = CLASSES
    return str(dsd_fast.save_model(pipe, folder / "eyes.safetensors"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return two_class_model_file(tmp_path_factory.mktemp("classes"))


@pytest.fixture(scope="module")
def class_server(model_file):
    """A server offering the bundled default (binary) and the two-class model "eyes"."""
    from dsd_fast.serve import ServeConfig
    from dsd_fast.serve.server import running_server
    config = ServeConfig(models=("default", model_file), port=0, threads=1,
                         batch_wait_ms=10, max_pixels=1_000_000, request_timeout_s=60)
    with running_server(config) as url:
        yield url


def post(url, path, **fields):
    files = {"file": (path.name, path.read_bytes(), "image/png")}
    return requests.post(url + "/v1/segment", files=files, data={**SMALL, **fields},
                         timeout=TIMEOUT)


def png_array(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im)


def test_a_two_class_model_answers_its_label_map_and_per_class_maps(class_server, model_file,
                                                                   sample_paths):
    import dsd_fast
    from dsd_fast.cli.class_outputs import CLASS_COLOURS
    path = sample_paths[0]
    ref = dsd_fast.load(model_file).segment([str(path)], seed=0, **SMALL)[0]
    assert ref.classes == CLASSES and set(np.unique(ref.mask)) >= {0, 1}
    r = post(class_server, path, model="eyes")
    assert r.status_code == 200, r.text
    body = r.json()
    labels = png_array(body["png"]["labels"])
    assert labels.dtype == np.uint8 and labels.shape == ref.mask.shape
    np.testing.assert_array_equal(labels, ref.mask)
    np.testing.assert_array_equal(png_array(body["png"]["mask"]), (ref.mask > 0) * 255)
    assert body["nested"] is True and body["area_pixels"] == int(np.count_nonzero(ref.mask))
    regions = ref.class_regions()
    assert [c["name"] for c in body["classes"]] == list(CLASSES)
    for k, entry in enumerate(body["classes"]):
        assert entry["label"] == k + 1
        assert entry["colour"] == "#%02x%02x%02x" % CLASS_COLOURS[k]
        assert entry["area_pixels"] == int(regions[k].sum())
        assert entry["mean_uncertainty"] == pytest.approx(float(ref.std[k].mean()), rel=1e-5)
        prob = png_array(entry["png"]["probability"]).astype(np.float64) / 65535
        assert prob.shape == ref.mask.shape
        assert np.abs(prob - ref.probability[k]).max() <= 1 / 65535 + 1e-6
        assert png_array(entry["png"]["uncertainty"]).shape == ref.mask.shape + (3,)
    # the two classes' maps differ (each class its own channel, not one map twice)
    assert not np.array_equal(body["classes"][0]["png"]["probability"],
                              body["classes"][1]["png"]["probability"])
    # the overlay outlines each class present in its own colour
    overlay = png_array(body["png"]["overlay"])
    assert overlay.shape == ref.mask.shape + (3,)
    for k in range(len(CLASSES)):
        if regions[k].any():
            assert (overlay == CLASS_COLOURS[k]).all(axis=-1).any(), CLASSES[k]
    assert "probability" not in body["png"] and "uncertainty" not in body["png"]

    # format=png: the label map, its classes named in a header
    r = post(class_server, path, model="eyes", format="png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["X-Classes"] == "disc,cup"
    with Image.open(io.BytesIO(r.content)) as im:
        np.testing.assert_array_equal(np.asarray(im), ref.mask)


def test_a_binary_model_beside_it_answers_as_before(class_server, sample_paths):
    r = post(class_server, sample_paths[0], model="default")
    assert r.status_code == 200, r.text
    body = r.json()
    assert "classes" not in body and "labels" not in body["png"]
    assert set(body["png"]) == {"mask", "probability", "uncertainty", "overlay"}
    r = post(class_server, sample_paths[0], model="default", format="png")
    assert "X-Classes" not in r.headers
