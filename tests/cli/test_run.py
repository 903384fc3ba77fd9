"""`dsd-fast segment` as a batch tool (dsd_fast/cli/): inputs, outputs, resume, crash
safety, bad input, large images.

Every run here passes --threads 1: the tiny model's forward is ~30x slower with two threads
on a busy two-core machine (threads wait on each other), and it keeps timings steady.
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

import dsd_fast
from dsd_fast import load_model, save_model, segment
from dsd_fast.cli import main
from dsd_fast.cli.discover import discover
from dsd_fast.cli.outputs import OutputLock
from dsd_fast.cli.run import BatchOptions
from dsd_fast.io import atomic_write, remove_stale_temp_files

REPO = Path(dsd_fast.__file__).resolve().parents[1]
FAST = ["--steps", "1", "--ensemble", "2", "--threads", "1", "-q"]
KINDS = ("mask", "prob", "uncertainty", "overlay")


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    return str(save_model(tiny_model, tmp_path / "tiny.safetensors"))


def _noise(h, w, c=3, seed=0, dtype=np.uint8):
    hi = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if c == 1 else (h, w, c)
    return np.random.default_rng(seed).integers(0, hi, shape, dtype=dtype)


def _outputs(out: Path, key: str) -> dict[str, Path]:
    return {k: out / f"{key}_{k}.png" for k in KINDS}


def _check_outputs(out: Path, key: str, size_hw) -> None:
    """All four outputs exist, decode fully, and have the original size and right modes."""
    h, w = size_hw
    paths = _outputs(out, key)
    for kind, p in paths.items():
        assert p.is_file(), f"missing {p}"
        with Image.open(p) as im:
            im.load()                                   # fully decodes: not truncated
            assert im.size == (w, h), f"{p}: size {im.size}, expected {(w, h)}"
            expected = {"mask": ("L",), "prob": ("I;16", "I"), "uncertainty": ("RGB",),
                        "overlay": ("RGB",)}[kind]
            assert im.mode in expected, f"{p}: mode {im.mode}"
    mask = np.array(Image.open(paths["mask"]))
    assert set(np.unique(mask)) <= {0, 255}
    prob = np.array(Image.open(paths["prob"]))
    assert prob.dtype in (np.uint16, np.int32) and prob.max() <= 65535
    # The mask is the probability map thresholded at 0.5 (p > 0.5), both at the original
    # size; 32768 holds probabilities on both sides of 0.5 (0.5 itself: two chains of which
    # one says lesion).
    assert ((mask > 0) == (prob > 32768))[prob != 32768].all()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_end_to_end_mixed_and_bad_inputs(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    sizes = {}

    def save(name, arr, **kw):
        Image.fromarray(arr).save(src / name, **kw)
        sizes[name] = arr.shape[:2]

    save("gray.png", _noise(40, 30, c=1))
    rgba = _noise(25, 35, c=4, seed=1)
    save("rgba.png", rgba)
    save("deep.tif", _noise(33, 47, c=1, seed=2, dtype=np.uint16))      # 16-bit TIFF
    save("one.png", _noise(1, 1, seed=3))                               # 1 x 1
    save("wide.png", _noise(5, 3000, seed=4))                           # 600:1
    save("photo.jpg", _noise(48, 64, seed=5), quality=90)
    save("paint.bmp", _noise(20, 21, seed=6))
    save("sub/gray.png", _noise(12, 18, c=1, seed=7))                   # same name, subfolder
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    good = (src / "photo.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(good[:len(good) // 2])
    (src / "notes.txt").write_text("not an image")
    assert Image.open(src / "deep.tif").mode == "I;16"
    before = _snapshot(src)

    out = tmp_path / "out"
    rc = main(["segment", str(src), "-r", "-o", str(out), "--checkpoint", ckpt, *FAST])
    cap = capsys.readouterr()
    assert rc == 1                                       # two inputs failed
    keys = {"gray": "gray.png", "rgba": "rgba.png", "deep": "deep.tif", "one": "one.png",
            "wide": "wide.png", "photo": "photo.jpg", "paint": "paint.bmp",
            "sub/gray": "sub/gray.png"}
    for key, name in keys.items():
        _check_outputs(out, key, sizes[name])
    for bad in ("corrupt.png", "truncated.jpg"):
        assert f"failed: {src / bad}" in cap.err
        assert not list(out.glob(f"{Path(bad).stem}_*"))
    assert "segmented 8, skipped 0 (already done), failed 2 of 10 inputs" in cap.out

    res = json.loads((out / "results.json").read_text())
    assert sorted(r["key"] for r in res["images"]) == sorted(keys)
    assert {f["input"] for f in res["failed"]} == {str(src / "corrupt.png"),
                                                   str(src / "truncated.jpg")}
    for r in res["images"]:
        mask = np.array(Image.open(out / r["outputs"]["mask"])) > 0
        assert r["area_px"] == int(mask.sum()) and (r["height"], r["width"]) == mask.shape
        assert 0 <= r["mean_uncertainty"] <= 0.5 and r["model_input"] == "full"
    import csv
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 8 and {"area_px", "mean_uncertainty"} <= set(rows[0])
    assert (out / "index.html").is_file()
    assert _snapshot(src) == before                       # the inputs are untouched
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_resume_skips_finished_images_and_redoes_partial_ones(tmp_path, ckpt, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(4):
        Image.fromarray(_noise(20 + i, 30, seed=i)).save(src / f"im{i}.png")
    args = ["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]
    assert main(args) == 0
    capsys.readouterr()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    # An image interrupted between its outputs: overlay written, no mask and no record.
    (out / "im1_mask.png").unlink()
    (out / ".dsd-fast" / "done" / "im1.json").unlink()
    # An image whose output was deleted afterwards.
    (out / "im2_overlay.png").unlink()
    time.sleep(0.01)
    assert main(args) == 0
    assert "segmented 2, skipped 2 (already done), failed 0 of 4 inputs" in capsys.readouterr().out
    for i in range(4):
        _check_outputs(out, f"im{i}", (20 + i, 30))
    for key in ("im0", "im3"):                          # untouched
        for p in _outputs(out, key).values():
            assert p.stat().st_mtime_ns == mtimes[p]
    # A changed input file is not "finished" any more.
    Image.fromarray(_noise(22, 31, seed=9)).save(src / "im3.png")
    assert main(args) == 0
    assert "segmented 1, skipped 3" in capsys.readouterr().out
    _check_outputs(out, "im3", (22, 31))
    assert main(args + ["--overwrite"]) == 0
    assert "segmented 4, skipped 0" in capsys.readouterr().out
    # Different settings: kept, with a note.
    assert main(args[:-len(FAST)] + ["--steps", "2", "--ensemble", "2", "--threads", "1",
                                     "-q"]) == 0
    cap = capsys.readouterr()
    assert "skipped 4" in cap.out and "steps 1 instead of 2" in cap.err


def test_cli_outputs_equal_segment(tmp_path, ckpt):
    """Below --max-pixels the CLI's mask and probability map are segment()'s, bit for bit."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_noise(37, 53, seed=11)).save(src / "x.png")
    assert main(["segment", str(src / "x.png"), "-o", str(out), "--checkpoint", ckpt,
                 "--steps", "2", "--ensemble", "3", "--seed", "5", "--threads", "1",
                 "-q"]) == 0
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # as the CLI ran: the thread count moves the last bit
    try:
        ref = segment(src / "x.png", steps=2, ensemble=3, seed=5, model=load_model(ckpt),
                      noise_keys=["x"])[0]        # the CLI keys noise by output name
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.array(Image.open(out / "x_mask.png")) > 0, ref.mask)
    assert np.array_equal(np.array(Image.open(out / "x_prob.png")),
                          (ref.probability * 65535 + 0.5).astype(np.uint16))
    rec = json.loads((out / "results.json").read_text())["images"][0]
    assert rec["mean_uncertainty"] == pytest.approx(float(ref.std.mean()), rel=1e-5)


def test_downscaled_decode_keeps_original_size(tmp_path, ckpt):
    """Above --max-pixels the model sees a reduced decode (JPEG draft / PIL reduce); the
    outputs are still at the original size and close to the full-decode ones."""
    src = tmp_path / "in"
    src.mkdir()
    yy, xx = np.mgrid[:120, :160]
    smooth = np.stack([xx * 1.5, yy * 2, (xx + yy) * 0.9], -1).astype(np.uint8)
    Image.fromarray(smooth).save(src / "s.png")
    Image.fromarray(smooth).save(src / "j.jpg", quality=95)
    Image.fromarray((yy * 500 + xx * 10).astype(np.uint16)).save(src / "d.tif")
    full, small = tmp_path / "full", tmp_path / "small"
    base = ["segment", str(src), "--checkpoint", ckpt, *FAST]
    assert main(base + ["-o", str(full)]) == 0
    assert main(base + ["-o", str(small), "--max-pixels", "2000"]) == 0
    recs = {r["key"]: r for r in json.loads((small / "results.json").read_text())["images"]}
    for key in ("s", "j", "d"):
        assert recs[key]["model_input"].startswith("downscaled from")
        _check_outputs(small, key, (120, 160))
        a = np.array(Image.open(full / f"{key}_prob.png")).astype(float) / 65535
        b = np.array(Image.open(small / f"{key}_prob.png")).astype(float) / 65535
        assert np.abs(a - b).mean() < 0.05, key


def test_discover_keys_mirror_folders_and_never_collide(tmp_path):
    src = tmp_path / "in"
    (src / "x" / "deep").mkdir(parents=True)
    (src / "y").mkdir()
    for rel in ("a.png", "a.jpg", "x/a.png", "y/a.png", "x/deep/b.tif", ".hidden.png"):
        (src / rel).write_bytes(b"")
    (src / "notes.txt").write_text("")
    flat = discover([str(src)])
    assert sorted(i.key for i in flat.images) == ["a_jpg", "a_png"]
    deep = discover([str(src)], recursive=True)
    assert sorted(i.key for i in deep.images) == ["a_jpg", "a_png", "x/a", "x/deep/b", "y/a"]
    glob = discover([str(src / "**" / "a.png")])
    assert sorted(i.key for i in glob.images) == ["a", "x/a", "y/a"]
    files = discover([str(src / "x" / "a.png"), str(src / "y" / "a.png"), str(src / "a.png")])
    assert [i.key for i in files.images] == ["a_png", "a_png_2", "a_png_3"]
    again = discover([str(src / "a.png"), str(src), str(src / "nothing*.png"),
                      str(src / "missing.png")])
    assert sorted(i.key for i in again.images) == ["a_jpg", "a_png"]    # a.png only once
    assert [m[0] for m in again.missing] == [str(src / "nothing*.png"), str(src / "missing.png")]


def test_refusals_lock_and_inplace(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_noise(9, 9)).save(src / "a.png")
    Image.fromarray(_noise(9, 9, seed=1)).save(src / "a_overlay.png")   # a user's own file
    # The output folder inside an input folder (also via a glob) is refused, nothing made.
    for spec in (str(src), str(src / "*.png")):
        assert main(["segment", spec, "-o", str(src / "o"), "--checkpoint", ckpt, *FAST]) == 2
        assert "inside an input folder" in capsys.readouterr().err
    assert not (src / "o").exists()
    # Another run holding the output folder.
    out = tmp_path / "out"
    with OutputLock(out):
        assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 2
    assert "another dsd-fast segment run" in capsys.readouterr().err
    # In place: an input is never overwritten, outputs are not taken as inputs on a re-run.
    user_file = (src / "a_overlay.png").read_bytes()
    args = ["segment", str(src / "a.png"), str(src / "a_overlay.png"), "-o", str(src),
            "--allow-inplace", "--checkpoint", ckpt, *FAST]
    assert main(args) == 1
    assert "would overwrite an input" in capsys.readouterr().err
    assert (src / "a_overlay.png").read_bytes() == user_file
    (src / "a_overlay.png").unlink()
    inplace = ["segment", str(src), "-o", str(src), "--allow-inplace", "--checkpoint", ckpt,
               *FAST]
    assert main(inplace) == 0
    capsys.readouterr()
    assert main(inplace) == 0
    assert "segmented 0, skipped 1 (already done), failed 0 of 1 inputs" in \
        capsys.readouterr().out


def test_fail_fast_stops_at_first_bad_image(tmp_path, ckpt, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_noise(9, 9)).save(src / "a.png")
    (src / "b.png").write_bytes(b"garbage")
    Image.fromarray(_noise(9, 9)).save(src / "c.png")
    rc = main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, "--fail-fast",
               "--batch-size", "2", *FAST])
    cap = capsys.readouterr()
    assert rc == 1 and "b.png" in cap.err
    assert (out / "a_mask.png").exists() and not (out / "c_mask.png").exists()
    res = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in res["images"]] == ["a"] and len(res["failed"]) == 1


def test_network_out_of_memory_halves_the_batch(tmp_path, ckpt, capsys, monkeypatch):
    from dsd_fast import Pipeline
    real, sizes = Pipeline.segment_views, []        # the segmenter's loop the command runs

    def tight(self, views, *a, **kw):
        sizes.append(len(views))
        if len(views) > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ...")
        return real(self, views, *a, **kw)
    monkeypatch.setattr(Pipeline, "segment_views", tight)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(5):
        Image.fromarray(_noise(9, 9, seed=i)).save(src / f"{i}.png")
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt,
                 "--batch-size", "4", *FAST]) == 0
    assert sizes[:3] == [4, 2, 1] and max(sizes[3:]) == 1
    assert len(list(out.glob("*_mask.png"))) == 5


def test_atomic_write_leaves_nothing_behind_when_interrupted(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def half_then_ctrl_c(f):
        f.write(b"new but only ha")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_ctrl_c)
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    (tmp_path / ".y.png.abc123.dsd.tmp").write_bytes(b"left by a killed run")
    assert remove_stale_temp_files(tmp_path) == 1 and sorted(tmp_path.iterdir()) == [target]


def test_options_are_checked(tmp_path, capsys):
    with pytest.raises(Exception, match="--batch-size must be an integer >= 1"):
        BatchOptions(output=tmp_path, batch_size=0)
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--steps", "0"]) == 2
    assert "--steps must be" in capsys.readouterr().err


# ------------------------------------------------------------------ subprocess runs

def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _six_images(src: Path) -> None:
    src.mkdir()
    yy, xx = np.mgrid[:900, :900]
    for i in range(6):
        base = np.stack([(xx + 40 * i) % 256, (yy * 2) % 256, ((xx + yy) // 4) % 256], -1)
        noisy = base + np.random.default_rng(i).integers(0, 30, base.shape)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(src / f"img{i}.png",
                                                                  compress_level=1)


def _start(src, out, ckpt, tmp_path):
    cmd = [sys.executable, "-m", "dsd_fast.cli", "segment", str(src), "-o", str(out),
           "--checkpoint", ckpt, "--steps", "3", "--ensemble", "4", "--batch-size", "1",
           "--threads", "1", "-q"]
    log = open(tmp_path / "run.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env()), cmd


def _wait_for_first_image(proc, out: Path, timeout=120.0) -> None:
    done = out / ".dsd-fast" / "done"
    t0 = time.monotonic()
    while not (done.is_dir() and any(done.glob("*.json"))):     # not its temporary file
        assert proc.poll() is None, "the run ended before its first image was finished"
        assert time.monotonic() - t0 < timeout, "no image finished in time"
        time.sleep(0.005)


def _assert_no_partial_files(out: Path) -> None:
    for p in out.rglob("*"):
        assert ".tmp" not in p.name, f"temporary file left: {p}"
        if p.suffix == ".png":
            with Image.open(p) as im:
                im.load()                           # raises on a truncated PNG
    for rec in (out / ".dsd-fast" / "done").glob("*.json"):
        json.loads(rec.read_text())


def _finished(out: Path) -> set[str]:
    return {p.stem for p in (out / ".dsd-fast" / "done").glob("*.json")}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_leaves_no_partial_files_and_resumes(tmp_path, ckpt, capsys, sig):
    src, out = tmp_path / "in", tmp_path / "out"
    _six_images(src)
    proc, cmd = _start(src, out, ckpt, tmp_path)
    try:
        _wait_for_first_image(proc, out)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "run.log").read_text()
    if sig == signal.SIGINT:
        assert rc == 130, log
        assert "interrupted:" in log and "run the same command again to resume" in log
        _assert_no_partial_files(out)
        assert json.loads((out / "results.json").read_text())["counts"]["segmented"] >= 1
    else:
        assert rc == -signal.SIGKILL
        # A kill can leave a temporary file, never a partial output under a final name.
        for p in out.rglob("*.png"):
            with Image.open(p) as im:
                im.load()
    finished = _finished(out)
    assert 1 <= len(finished) < 6, f"finished {finished}: the signal came too late"
    mtimes = {p: p.stat().st_mtime_ns for k in finished for p in _outputs(out, k).values()}

    assert main(cmd[3:]) == 0                           # the same command, resumed
    summary = capsys.readouterr().out
    assert f"segmented {6 - len(finished)}, skipped {len(finished)} (already done)" in summary
    _assert_no_partial_files(out)
    for i in range(6):
        _check_outputs(out, f"img{i}", (900, 900))
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert len(json.loads((out / "results.json").read_text())["images"]) == 6


@pytest.mark.slow
def test_64_megapixel_image_fits_in_memory(tmp_path, ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.new("RGB", (8000, 8000), (196, 140, 120)).save(src / "big.png")
    code = ("import resource, sys\n"
            "from dsd_fast.cli import main\n"
            f"rc = main({['segment', str(src), '-o', str(out), '--checkpoint', ckpt, *FAST]!r})\n"
            "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            "sys.exit(rc)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    peak_gib = int(run.stdout.split("peak_rss_kib")[1].split()[0]) / 2**20
    print(f"64 MP image: peak RSS {peak_gib:.2f} GiB")
    assert peak_gib < 3.0, f"peak RSS {peak_gib:.2f} GiB"
    for p in _outputs(out, "big").values():
        with Image.open(p) as im:
            assert im.size == (8000, 8000)
    mask = np.array(Image.open(out / "big_mask.png"))
    assert mask.shape == (8000, 8000) and set(np.unique(mask)) <= {0, 255}
    rec = json.loads((out / "results.json").read_text())["images"][0]
    assert rec["model_input"].startswith("downscaled from") and rec["width"] == 8000


def test_glob_recursive_ground_truth_and_output_choice(tmp_path, ckpt, capsys):
    src, gt, out = tmp_path / "in", tmp_path / "gt", tmp_path / "out"
    (src / "s").mkdir(parents=True), (gt / "s").mkdir(parents=True)
    full = np.ones((10, 12), np.uint8) * 255
    for rel in ("a.png", "s/a.png"):
        Image.fromarray(_noise(10, 12)).save(src / rel)
    Image.fromarray(full).save(gt / "a.png")              # flat layout for a
    Image.fromarray(full * 0).save(gt / "s" / "a.png")    # mirrored layout for s/a
    rc = main(["segment", str(src / "**" / "*.png"), "-o", str(out), "--gt", str(gt),
               "--no-maps", "--no-overlay", "--no-report", "--checkpoint", ckpt, *FAST])
    assert rc == 0, capsys.readouterr().err
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".dsd-fast" not in str(p))
    assert names == ["a_mask.png", "metrics.csv", "results.csv", "results.json", "s",
                     "s/a_mask.png"]
    res = {r["key"]: r for r in json.loads((out / "results.json").read_text())["images"]}
    from dsd_fast.metrics import dice
    for key, truth in (("a", full > 0), ("s/a", full == 0)):
        pred = np.array(Image.open(out / f"{key}_mask.png")) > 0
        assert res[key]["metrics"]["dice"] == pytest.approx(dice(pred, truth))
    # Asking for the overlay later: the images are no longer finished, so they are redone.
    assert main(["segment", str(src / "**" / "*.png"), "-o", str(out), "--no-maps",
                 "--checkpoint", ckpt, *FAST]) == 0
    assert "segmented 2, skipped 0" in capsys.readouterr().out
    assert (out / "s" / "a_overlay.png").is_file() and (out / "index.html").is_file()


def test_auto_batch_size_follows_the_memory_budget(tiny_model, monkeypatch):
    from dsd_fast import pipeline_from_network
    from dsd_fast.cli import memory
    from dsd_fast.cli.memory import AUTO_BATCH_MAX, CPU_BUDGET_FRACTION, auto_batch_size
    pipe = pipeline_from_network(tiny_model)
    per_image = pipe.family.chain_bytes(pipe.config) * 5
    assert auto_batch_size(pipe, 5, budget=per_image // 2) == 1
    assert auto_batch_size(pipe, 5, budget=3 * per_image) == 3
    assert auto_batch_size(pipe, 5, budget=1 << 40) == AUTO_BATCH_MAX
    # Without a budget it comes from the available memory (faked here so the expected
    # numbers are known): 40% of it, in whole images.
    for images in (1, 2, 5):
        avail = int((images + 0.5) * per_image / CPU_BUDGET_FRACTION)
        monkeypatch.setattr(memory, "available_memory", lambda: avail)
        assert auto_batch_size(pipe, 5) == images
    monkeypatch.setattr(memory, "available_memory", lambda: None)     # unknown: 2 GiB
    assert auto_batch_size(pipe, 5) == min(AUTO_BATCH_MAX, (2 << 30) // per_image)


def test_tta_and_trailing_spacing_reach_segment_and_the_settings(tmp_path, ckpt):
    """--tta and --spacing trailing give segment()'s masks for the same options, and are
    recorded in results.json (so a resumed run with other options is noticed)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_noise(30, 26, seed=4)).save(src / "y.png")
    assert main(["segment", str(src / "y.png"), "-o", str(out), "--checkpoint", ckpt,
                 "--steps", "2", "--ensemble", "3", "--tta", "--spacing", "trailing",
                 "--threads", "1", "-q"]) == 0
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = segment(src / "y.png", steps=2, ensemble=3, model=load_model(ckpt),
                      noise_keys=["y"], tta=True, spacing="trailing")[0]
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.array(Image.open(out / "y_mask.png")) > 0, ref.mask)
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["tta"] is True and settings["spacing"] == "trailing"


def test_sampler_defaults_come_from_the_model_file_and_are_recorded(tmp_path, tiny_model):
    """Without --steps / --ensemble / --spacing the run takes the file's sampler_defaults, as
    segment() does, and results.json records the numbers it ran with; one of them given ->
    25 / 5 / leading for the rest."""
    ckpt = str(save_model(tiny_model, tmp_path / "m.safetensors", extra_metadata={
        "sampler_defaults": {"steps": 2, "ensemble": 3, "spacing": "trailing"}}))
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_noise(20, 18, seed=6)).save(src / "y.png")
    out = tmp_path / "out"
    assert main(["segment", str(src / "y.png"), "-o", str(out), "--checkpoint", ckpt,
                 "--threads", "1", "-q"]) == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert (settings["steps"], settings["ensemble"], settings["spacing"]) == (2, 3, "trailing")
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = segment(src / "y.png", model=dsd_fast.load(ckpt), noise_keys=["y"])[0]
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.array(Image.open(out / "y_mask.png")) > 0, ref.mask)
    out2 = tmp_path / "out2"
    assert main(["segment", str(src / "y.png"), "-o", str(out2), "--checkpoint", ckpt,
                 "--steps", "2", "--threads", "1", "-q"]) == 0
    settings = json.loads((out2 / "results.json").read_text())["settings"]
    assert (settings["steps"], settings["ensemble"]) == (2, 5) and "spacing" not in settings
