"""`dsd-fast segment --ray` on a terminal: the command's own lines and nothing of Ray's (its
loggers' notices in Ray's format, the raylet's yellow notices, its C++ core worker's log
lines, which only a separate process's captured stderr can show).

The subprocess runs kill one worker, Ray's noisiest case. The in-process tests check
cli/ray_terminal.py's routing on its own, without a cluster.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="the [ray] extra is not installed")

from dsd_fast import save_model  # noqa: E402

ARGS = ["--steps", "2", "--ensemble", "2", "--threads", "1"]
RAY_NOISE = ("\x1b[", "core_worker", "(raylet)", " -- ", "Token authentication", "ray.io")


@pytest.fixture
def run_inputs(tmp_path, tiny_model):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (18, 26, 3), dtype=np.uint8)
                        ).save(src / f"im{i}.png")
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    return src, str(save_model(tiny_model, tmp_path / "tiny.safetensors"))


def cli(src, out, ckpt, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "dsd_fast.cli", "segment", str(src), "-o",
                           str(out), "--checkpoint", ckpt, *ARGS, *extra],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, **(env or {})})


def same_run(text: str, out) -> str:
    """`text` with what differs between two runs of the same inputs taken out: the output
    folder, the time and the rate."""
    text = text.replace(str(out), "OUT")
    return re.sub(r"in [0-9.]+ s, [0-9.]+ images/s", "in T s, R images/s", text)


def lines(text: str) -> list[str]:
    """Terminal lines, a progress bar's redraws (after \\r) as lines of their own."""
    return [s for s in re.split(r"[\r\n]", text) if s.strip()]


def test_quiet_ray_run_prints_what_the_local_run_prints(run_inputs, tmp_path):
    """-q: stdout and stderr are the local command's, line for line (the summary, the
    broken image's line), although a worker is killed and Ray replaces it; and the killed
    worker's images are all done, each once, nothing half-written. (One run for both: a Ray
    instance takes ~15 s to start on the 2-core CI machine.)"""
    src, ckpt = run_inputs
    local = cli(src, tmp_path / "local", ckpt, "-q")
    marker = tmp_path / "crashed"
    out = tmp_path / "ray"
    ray = cli(src, out, ckpt, "-q", "--ray", "--workers", "2",
              env={"DSD_FAST_TEST_CRASH_ONCE": str(marker)})
    assert marker.exists(), "no worker died: the test did not test anything"
    assert local.returncode == ray.returncode == 1, ray.stderr[-3000:]
    assert "segmented 6," in ray.stdout and "broken.png" in ray.stderr
    assert same_run(ray.stdout, out) == same_run(local.stdout, tmp_path / "local")
    assert same_run(ray.stderr, out) == same_run(local.stderr, tmp_path / "local")
    keys = [r["key"] for r in json.loads((out / "results.json").read_text())["images"]]
    assert len(keys) == len(set(keys)) == 6
    assert not list(out.rglob("*.dsd.tmp"))                     # nothing half-written
    assert len(list(out.rglob("*_mask.png"))) == 6


def test_ray_run_prints_only_its_own_lines_and_one_line_warnings(run_inputs, tmp_path):
    """Without -q: stdout is the local command's; stderr holds the local command's lines,
    the progress bar, and otherwise only one-line `warning: ` lines (a dead worker said so
    in one line, not Ray's yellow paragraph on stdout); no colour codes, no Ray log lines."""
    src, ckpt = run_inputs
    local = cli(src, tmp_path / "local", ckpt)
    marker = tmp_path / "crashed"
    ray = cli(src, tmp_path / "ray", ckpt, "--ray", "--workers", "2",
              env={"DSD_FAST_TEST_CRASH_ONCE": str(marker)})
    assert marker.exists(), "no worker died: the test did not test anything"
    assert local.returncode == ray.returncode == 1, ray.stderr[-3000:]
    assert same_run(ray.stdout, tmp_path / "ray") == same_run(local.stdout, tmp_path / "local")
    own = [s for s in lines(local.stderr) if not s.startswith("segment:")]
    assert own and all("broken.png" in s for s in own)
    rest = [s for s in lines(ray.stderr) if not s.startswith("segment (ray, 2 workers):")]
    assert [s for s in rest if not s.startswith("warning: ")] == own, ray.stderr[-3000:]
    for noise in RAY_NOISE:
        assert noise not in ray.stdout + ray.stderr, (noise, ray.stderr[-3000:])


@pytest.fixture
def ray_loggers():
    """The Ray loggers' handlers before a test, to check that RayTerminal puts them back."""
    return {name: list(logging.getLogger(name).handlers) for name in ("ray", "ray.data")}


def test_ray_logger_records_print_as_one_line_warnings(ray_loggers, capsys):
    from dsd_fast.cli.ray_terminal import RayTerminal
    log = logging.getLogger("ray.data._internal.some_module")
    with RayTerminal(quiet=False):
        log.warning("the object store is small;\n  pass object_store_memory")
        log.warning("the object store is small;\n  pass object_store_memory")   # once
        log.warning("Progress bars disabled. To enable, set ...")   # the command's choice
        logging.getLogger("ray._private.authentication.x").warning(
            "Token authentication is enabled for this Ray cluster. Set ...")
        log.error("An exception was raised from a task")   # the run's own line says it
        log.info("Starting execution of Dataset")
    assert capsys.readouterr().err == \
        "warning: ray: the object store is small; pass object_store_memory\n"
    with RayTerminal(quiet=True):
        log.warning("the object store is small")
        log.error("An exception was raised from a task")
    assert capsys.readouterr() == ("", "")
    assert {name: list(logging.getLogger(name).handlers) for name in ray_loggers} == \
        ray_loggers


def test_raylet_notices_print_as_one_line(capsys):
    """The raylet's notices reach the terminal through ray._private.worker's
    print_to_stdstream, which the driver's listener thread looks up by name on each
    notice: a dead worker is one line, its task's retry nothing more, -q nothing."""
    import inspect

    import ray._private.worker as ray_worker

    from dsd_fast.cli.ray_terminal import WORKER_DIED, RayTerminal
    assert "print_to_stdstream(" in inspect.getsource(ray_worker.listen_error_messages)
    original = ray_worker.print_to_stdstream
    died = {"lines": ["A worker died or was killed while executing a task by an unexpected "
                      "system error. To troubleshoot the problem, check the logs"],
            "pid": "raylet", "is_err": False}
    retried = {"lines": ["Task MapBatches(f) failed. There are infinite retries remaining, "
                         "so the task will be retried. Error: ..."],
               "pid": "raylet", "is_err": False}
    other = {"lines": ["Resources requested by a task are not available"], "pid": "raylet",
             "is_err": False}
    with RayTerminal(quiet=False):
        for notice in (died, retried, died, other):
            ray_worker.print_to_stdstream(notice, ignore_prefix=False)
    assert capsys.readouterr() == ("", f"warning: {WORKER_DIED}\nwarning: ray: Resources "
                                       "requested by a task are not available\n")
    with RayTerminal(quiet=True):
        for notice in (died, retried, other):
            ray_worker.print_to_stdstream(notice, ignore_prefix=False)
    assert capsys.readouterr() == ("", "")
    assert ray_worker.print_to_stdstream is original


def test_a_worker_process_loads_the_model_once_per_run(monkeypatch, tmp_path):
    """Tasks, not actors (so Ray's core worker has nothing to print): the model a worker
    process loaded on its run's first batch serves the run's later batches; a new run
    replaces it."""
    import dataclasses

    from dsd_fast.cli import run_ray, worker
    loads = []
    monkeypatch.setattr(worker, "load_checked_pipeline",
                        lambda model, opts: loads.append(opts) or f"pipe{len(loads)}")
    monkeypatch.setattr(run_ray, "_LOADED", {})
    opts = worker.BatchOptions(output=tmp_path / "out", checkpoint="m.safetensors", threads=1)
    opts = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    first = run_ray._run_pipeline("run-a", opts, {}, [])
    assert run_ray._run_pipeline("run-a", opts, {}, []) is first and len(loads) == 1
    assert first.pipe == "pipe1" and first.opts.quiet and first.opts.ray is None
    second = run_ray._run_pipeline("run-b", opts, {}, [])
    assert second.pipe == "pipe2" and list(run_ray._LOADED) == ["run-b"]
