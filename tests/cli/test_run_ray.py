"""`dsd-fast segment --ray` on a real local Ray instance (the [ray] extra): the same outputs as
the local command, an interrupted driver resumed (a worker killed mid-run:
test_ray_terminal.py, whose -q run checks its images too).

Each run is a subprocess (its own Ray instance, started and shut down by the command) with
the tiny model, 2 steps, ensemble 2, one-thread workers, so the file stays within about a
minute on the 2-core CI machine.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="the [ray] extra is not installed")

from dsd_fast import save_model  # noqa: E402

ARGS = ["--steps", "2", "--ensemble", "2", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """11 images (3 in sub/) and a broken one, and the tiny model's file: read, never
    written, by every test here (their outputs go to their own tmp_path)."""
    from conftest import make_model
    root = tmp_path_factory.mktemp("ray_inputs")
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(11):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (18, 26, 3), dtype=np.uint8)
                        ).save(src / ("sub" if i % 3 == 0 else "") / f"im{i}.png")
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    return src, str(save_model(make_model("tiny"), root / "tiny.safetensors"))


@pytest.fixture(scope="module")
def local_run(folder, tmp_path_factory):
    """The local command's run of the folder (ARGS): what the Ray runs are compared with."""
    src, ckpt = folder
    out = tmp_path_factory.mktemp("ray_local") / "local"
    return cli(str(src), "-r", "-o", str(out), "--checkpoint", ckpt, *ARGS), out


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "dsd_fast.cli", "segment", *args],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, **(env or {})}, **kw)


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def comparable(out: Path) -> dict:
    doc = json.loads((out / "results.json").read_text())
    for r in doc["images"]:
        r.pop("finished")                           # a timestamp: the one expected difference
    return doc


def test_ray_outputs_equal_the_local_command(folder, local_run, tmp_path):
    src, ckpt = folder
    local, local_out = local_run
    ray = cli(str(src), "-r", "-o", str(tmp_path / "ray"), "--checkpoint", ckpt, *ARGS,
              "--ray", "--workers", "2")
    assert local.returncode == ray.returncode == 1, ray.stderr     # the broken image
    assert "broken.png" in ray.stderr and "segmented 11" in ray.stdout
    assert outputs(local_out) == outputs(tmp_path / "ray")
    assert len(outputs(tmp_path / "ray")) == 4 * 11
    assert comparable(local_out) == comparable(tmp_path / "ray")


def test_an_interrupted_driver_resumes(folder, tmp_path):
    src, ckpt = folder
    out = tmp_path / "out"
    # 40 steps per image, not 2: at 2 the 11 tiny images could all finish between the second
    # one's record and the interrupt landing (seen once on the fresh-clone CI), and the test
    # would then have nothing to resume.
    slow = ["--steps", "40", *ARGS[2:]]
    proc = subprocess.Popen([sys.executable, "-m", "dsd_fast.cli", "segment", str(src), "-r",
                             "-o", str(out), "--checkpoint", ckpt, *slow, "--ray",
                             "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    done = out / ".dsd-fast" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(done.rglob("*.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    finished = len(list(done.rglob("*.json")))
    assert 2 <= finished < 11, "interrupt before the end, after two images"
    again = cli(str(src), "-r", "-o", str(out), "--checkpoint", ckpt, *slow, "--ray",
                "--workers", "2")
    assert again.returncode == 1
    assert f"skipped {finished}" in again.stdout and f"segmented {11 - finished}" in again.stdout
    assert len(list(out.rglob("*_mask.png"))) == 11


def test_segment_files_runs_the_same_way_in_python(folder, local_run, tmp_path):
    import dsd_fast
    src, ckpt = folder
    summary = dsd_fast.segment_files([str(src)], tmp_path / "py", checkpoint=ckpt, steps=2,
                                     ensemble=2, threads=1, recursive=True, ray="local",
                                     workers=2)
    assert summary.segmented == 11 and len(summary.failures) == 1
    local, local_out = local_run
    assert local.returncode == 1
    assert outputs(tmp_path / "py") == outputs(local_out)


@pytest.fixture
def full_disk(tmp_path):
    """A real file system with room for a few images' outputs only: a 160 KiB tmpfs (needs
    root; the test is skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or 'not root'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_stops_the_ray_run_like_the_local_one(folder, tmp_path, full_disk):
    """Workers writing into a full disk: the run stops with the local command's one line
    ("No space left on device; stopped"), exit 1, the summary printed; no Ray traceback,
    nothing half-written."""
    src, ckpt = folder
    for mode, extra in (("local", []), ("ray", ["--ray", "--workers", "2"])):
        out = full_disk / mode
        res = cli(str(src), "-r", "-o", str(out), "--checkpoint", ckpt, *ARGS, *extra)
        assert res.returncode == 1, (mode, res.stderr[-2000:])
        assert "No space left on device; stopped" in res.stderr, (mode, res.stderr[-2000:])
        for noise in ("Traceback", "RayTaskError", "UserCodeException", "ray::"):
            assert noise not in res.stderr, (mode, res.stderr[-2000:])
        assert "segmented " in res.stdout and " of 12 inputs" in res.stdout, (mode, res.stdout)
        assert not list(out.rglob("*.dsd.tmp")), mode
        finished = len(list((out / ".dsd-fast" / "done").rglob("*.json")))
        assert 0 < finished < 11, (mode, finished)        # the disk filled part-way
        subprocess.run(["rm", "-rf", str(out)])


def test_a_model_that_does_not_load_stops_the_ray_run_before_it_starts(folder, tmp_path):
    """A model file the workers could not load: the usage error of the local command
    (exit 2, one line), not a worker traceback after every actor's retries."""
    src, _ = folder
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    out = tmp_path / "out"
    res = cli(str(src), "-r", "-o", str(out), "--checkpoint", str(bad), *ARGS, "--ray",
              "--workers", "1")
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith("error: cannot load the model") and "Traceback" not in \
        res.stderr, res.stderr[-2000:]
    assert not out.exists()
