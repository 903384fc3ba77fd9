"""`dsd-fast segment` with what users' folders and models bring (issue #38): an output name
taken by another input, a model that takes other than 3-channel images, a model with few
diffusion steps, a model that does not load. Every run passes --threads 1 (test_run.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsd_fast import save_model
from dsd_fast.cli import main

from conftest import make_model

FAST = ["--steps", "1", "--ensemble", "2", "--threads", "1", "-q"]


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    return str(save_model(tiny_model, tmp_path / "tiny.safetensors"))


def _image(path: Path, h: int, w: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
                    ).save(path)
    return path


def test_an_output_name_taken_by_another_input_is_not_replaced(tmp_path, ckpt, capsys):
    """Camera folders reuse IMG_0001.JPG: A/x.png then B/x.png into one folder. B is refused
    (failed, naming A and --overwrite); A's outputs and record stay, results.json keeps A."""
    a = _image(tmp_path / "A" / "x.png", 18, 26, seed=0)
    b = _image(tmp_path / "B" / "x.png", 30, 20, seed=1)
    out = tmp_path / "out"
    assert main(["segment", str(a), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    mask_a = (out / "x_mask.png").read_bytes()
    capsys.readouterr()
    assert main(["segment", str(b), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 1
    err = capsys.readouterr().err
    assert str(a.resolve()) in err and "--overwrite" in err, err
    assert (out / "x_mask.png").read_bytes() == mask_a
    assert Image.open(out / "x_mask.png").size == (26, 18)           # still A's
    doc = json.loads((out / "results.json").read_text())
    assert [r["input"] for r in doc["images"]] == [str(a.resolve())]
    assert [f["input"] for f in doc["failed"]] == [str(b)]
    # Both named in one later run: A is skipped (finished), B still refused.
    assert main(["segment", str(a), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    assert "skipped 1" in capsys.readouterr().out
    # --overwrite replaces A's outputs with B's, as asked.
    assert main(["segment", str(b), "-o", str(out), "--checkpoint", ckpt, *FAST,
                 "--overwrite"]) == 0
    assert Image.open(out / "x_mask.png").size == (20, 30)
    doc = json.loads((out / "results.json").read_text())
    assert [r["input"] for r in doc["images"]] == [str(b.resolve())] and not doc["failed"]


def test_results_keep_the_folders_earlier_records(tmp_path, ckpt, capsys):
    """A second run with other inputs into the same folder: results.json lists what the
    folder holds (the first run's images too, while their inputs and outputs are unchanged)."""
    a = _image(tmp_path / "in" / "a.png", 18, 26, seed=0)
    b = _image(tmp_path / "in" / "b.png", 20, 20, seed=1)
    out = tmp_path / "out"
    assert main(["segment", str(a), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    assert main(["segment", str(b), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [(r["key"], r["status"]) for r in doc["images"]] == [("b", "segmented"),
                                                                 ("a", "earlier")]
    assert doc["counts"] == {"segmented": 1, "skipped": 0, "failed": 0}
    (out / "a_mask.png").unlink()                     # no longer valid: not listed
    assert main(["segment", str(b), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in doc["images"]] == ["b"]


def test_a_model_for_other_image_channels_fails_each_image_with_what_it_expects(
        tmp_path, capsys):
    """A model whose first layer takes 4 image channels: every (RGB) image is recorded as
    failed with the channel counts, the run goes on and writes its summary; no traceback."""
    ckpt = str(save_model(make_model("msd_tiny", input_img_channels=4),
                          tmp_path / "msd4.safetensors"))
    a = _image(tmp_path / "in" / "a.png", 18, 26, seed=0)
    b = _image(tmp_path / "in" / "b.png", 20, 20, seed=1)
    out = tmp_path / "out"
    assert main(["segment", str(a), str(b), "-o", str(out), "--checkpoint", ckpt,
                 *FAST]) == 1
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    assert cap.err.count("4-channel") == 2 and "3" in cap.err, cap.err
    assert "failed 2 of 2 inputs" in cap.out
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["failed"]) == 2 and "4-channel" in doc["failed"][0]["error"]


def test_default_steps_are_capped_at_a_small_models_T(tmp_path, capsys):
    """A model trained with T = 20 (med-seg-diff-pytorch's driver --timesteps 20) runs with
    no steps given: the default 25 steps become 20, with one note; results record 20."""
    path = tmp_path / "msd20.pt"
    torch.save(make_model("msd_tiny").state_dict(), path)
    a = _image(tmp_path / "in" / "a.png", 18, 26, seed=0)
    out = tmp_path / "out"
    assert main(["segment", str(a), "-o", str(out), "--checkpoint", str(path),
                 "--model-setting", "timesteps=20", "--ensemble", "1", "--threads", "1",
                 "-q"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "20" in err
    assert json.loads((out / "results.json").read_text())["settings"]["steps"] == 20
    # Steps given above T are still refused: the user asked for them.
    assert main(["segment", str(a), "-o", str(tmp_path / "out2"), "--checkpoint", str(path),
                 "--model-setting", "timesteps=20", "--steps", "25", "--ensemble", "1",
                 "--threads", "1", "-q"]) == 2
    assert "1..20" in capsys.readouterr().err


def test_a_failed_model_load_leaves_nothing_behind(tmp_path, capsys):
    """No lock file, no state folder, no output folder made by a run that could not start."""
    a = _image(tmp_path / "in" / "a.png", 18, 26, seed=0)
    out = tmp_path / "new" / "out"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    for model in (str(tmp_path / "absent.pt"), str(bad)):
        assert main(["segment", str(a), "-o", str(out), "--checkpoint", model, *FAST]) == 2
        assert "cannot load the model" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()
    # An existing folder is kept, and what was in it; only the run's own state goes.
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("a user's file")
    assert main(["segment", str(a), "-o", str(out), "--checkpoint", str(bad), *FAST]) == 2
    assert sorted(p.name for p in out.rglob("*")) == ["mine.txt"]


def test_the_lock_file_goes_with_the_run(tmp_path, ckpt):
    a = _image(tmp_path / "in" / "a.png", 18, 26, seed=0)
    out = tmp_path / "out"
    assert main(["segment", str(a), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    assert not (out / ".dsd-fast" / "lock").exists()


def test_a_ray_workers_error_becomes_one_line_under_rays_wrappers(tmp_path):
    """What the driver makes of an exception Ray hands it (wrapped, its cause inside): a
    write error or any other stops the run with the worker's one line; a usage error is
    the run's usage error. (The full disk on real Ray: test_run_ray.py.)"""
    import errno
    import io

    from dsd_fast.cli.errors import OutputError, UsageError
    from dsd_fast.cli.run import BatchOptions, RunState
    from dsd_fast.cli.run_ray import _collect

    class Wrapper(Exception):                 # as Ray's RayTaskError: the cause attached
        def __init__(self, cause):
            super().__init__(f"ray::MapWorker failed\n{'traceback line ' * 40}")
            self.cause = cause

    def rows(cause):
        yield from ()
        raise Wrapper(cause) from RuntimeError("UDF failed to process a data block")

    full = OutputError(f"cannot write {tmp_path}/a_mask.png: [Errno 28] No space left on "
                       "device")
    full.errno = errno.ENOSPC
    for cause, expected in ((full, "No space left on device"),
                            (ZeroDivisionError("division by zero"),
                             "a Ray worker failed: ZeroDivisionError: division by zero")):
        state = RunState(BatchOptions(output=tmp_path), io.StringIO(), io.StringIO(), 0.0)
        _collect(state, rows(cause), {}, type("Bar", (), {"update": lambda self, n=1: None})())
        assert expected in state.fatal and "traceback line" not in state.fatal
    with pytest.raises(UsageError, match="cannot load the model"):
        _collect(state, rows(UsageError("cannot load the model: x")), {}, None)
