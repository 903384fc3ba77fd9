"""Bad input, as a hostile-but-realistic user gives it (issue "Hardening"): every case here
failed before its fix (a traceback, a wrong picture, a hang, or a user's file replaced).

CLI runs pass --threads 1 and the tiniest settings; each case says what it guards.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dsd_fast import CheckpointError, ImageInputError, load_model, save_model, segment
from dsd_fast.cli import main
from dsd_fast.images import to_chw

FAST = ["--steps", "1", "--ensemble", "2", "--threads", "1", "-q"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    return str(save_model(tiny_model, tmp_path / "tiny.safetensors"))


def _pattern(h=120, w=240):
    """A picture whose orientation is visible: a gradient across, a bright top-left corner."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    a[: h // 4, : w // 4] = 255
    return a


def _save_with_orientation(path: Path, arr: np.ndarray, tag: int, **kw) -> None:
    exif = Image.Exif()
    exif[0x0112] = tag
    Image.fromarray(arr).save(path, exif=exif.tobytes(), **kw)


# ----------------------------------------------------------------------------- bug 1: EXIF

@pytest.mark.parametrize("tag", range(1, 9))
def test_exif_orientation_is_applied_like_every_viewer(tmp_path, tag):
    """PNG (lossless) with each orientation: the decoded picture is PIL's exif_transpose."""
    path = tmp_path / f"o{tag}.png"
    _save_with_orientation(path, _pattern(), tag)
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = (to_chw(path).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert got.shape == shown.shape and np.array_equal(got, shown)


def test_exif_rotated_jpeg_gets_an_upright_mask_api_and_cli(tmp_path, tiny_model, ckpt):
    src = tmp_path / "in"
    src.mkdir()
    _save_with_orientation(src / "phone.jpg", _pattern(120, 240), 6, quality=95)  # stored 240 x 120
    assert segment(src / "phone.jpg", steps=1, ensemble=1, model=tiny_model)[0].mask.shape \
        == (240, 120)                                                  # shown 120 wide, 240 high
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    for kind in ("mask", "prob", "uncertainty", "overlay"):
        assert Image.open(out / f"phone_{kind}.png").size == (120, 240), kind
    # the overlay is drawn on the upright picture: its bright corner is top-right now
    ov = np.asarray(Image.open(out / "phone_overlay.png")).astype(int)
    assert ov[10:20, 100:110].mean() > ov[10:20, 10:20].mean() + 50


def test_exif_rotated_ground_truth_and_reduced_decode(tmp_path, ckpt):
    """--gt masks and the large-image (reduced) decode path are turned upright too."""
    src, gt, out = tmp_path / "in", tmp_path / "gt", tmp_path / "out"
    src.mkdir(), gt.mkdir()
    _save_with_orientation(src / "a.jpg", _pattern(64, 128), 8, quality=95)
    m = np.zeros((64, 128), np.uint8)
    m[:, :40] = 255
    _save_with_orientation(gt / "a.png", m, 8)
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, "--gt", str(gt),
                 "--max-pixels", "2000", *FAST]) == 0          # 8192 px > 2000: reduced decode
    rec = json.loads((out / "results.json").read_text())["images"][0]
    assert (rec["width"], rec["height"]) == (64, 128) and rec["model_input"].startswith("down")
    assert rec["metrics"] is not None                   # sizes agree once both are upright


# ----------------------------------------------------------------------------- bugs 3-6

def test_non_utf8_file_name_is_segmented(tmp_path, ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    raw = os.fsencode(src) + b"/l\xe9sion.png"                  # Latin-1, invalid UTF-8
    Image.fromarray(_pattern(20, 30)).save(os.fsdecode(raw))
    Image.fromarray(_pattern(20, 30)).save(src / "ok.png")
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    names = set(os.listdir(os.fsencode(out)))
    assert b"l\xe9sion_mask.png" in names and b"ok_mask.png" in names
    assert b"l\xe9sion" in (out / "results.csv").read_bytes()   # the name's own bytes
    assert b"l%E9sion_mask.png" in (out / "index.html").read_bytes()   # links to the file


def test_recursive_glob_over_a_symlink_loop_finishes(tmp_path, ckpt):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(_pattern(20, 30)).save(d / "sub" / "a.png")
    os.symlink(d, d / "sub" / "loop")                            # d/sub/loop -> d
    os.symlink(d / "sub", d / "sub" / "self")
    code = ("import sys; from dsd_fast.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "segment", str(d / "**" / "*.png"),
                           "-o", str(tmp_path / "out"), "--checkpoint", ckpt, *FAST],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "segmented 1," in proc.stdout                          # the loop is not followed


def test_allow_inplace_never_replaces_a_users_own_mask(tmp_path, ckpt):
    d = tmp_path / "d"
    d.mkdir()
    Image.fromarray(_pattern(20, 30)).save(d / "a.png")
    mine = np.full((20, 30), 7, np.uint8)
    Image.fromarray(mine).save(d / "a_mask.png")                 # the user's, not ours
    before = (d / "a_mask.png").read_bytes()
    assert main(["segment", str(d), "-o", str(d), "--allow-inplace", "--checkpoint", ckpt,
                 *FAST]) == 1
    assert (d / "a_mask.png").read_bytes() == before
    # the tool's own outputs are replaced on a re-run as before; --overwrite replaces theirs
    assert main(["segment", str(d), "-o", str(d), "--allow-inplace", "--overwrite",
                 "--checkpoint", ckpt, *FAST]) == 0
    assert (d / "a_mask.png").read_bytes() != before
    assert main(["segment", str(d), "-o", str(d), "--allow-inplace", "--overwrite",
                 "--checkpoint", ckpt, *FAST]) == 0


def test_a_users_results_csv_in_a_fresh_output_folder_is_not_replaced(tmp_path, ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir(), out.mkdir()
    Image.fromarray(_pattern(20, 30)).save(src / "a.png")
    (out / "results.csv").write_text("my spreadsheet")
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 2
    assert (out / "results.csv").read_text() == "my spreadsheet"


def test_killed_run_resumes_over_its_own_unrecorded_outputs(tmp_path, ckpt):
    """Outputs written before a kill, whose record was never written, are still the tool's
    (its claim names them): the resumed run replaces them without --overwrite."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_pattern(20, 30)).save(src / "a.png")
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    (out / ".dsd-fast" / "done" / "a.json").unlink()              # as if killed before it
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_not_read(tmp_path, tiny_model):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code = ("import sys, torch; from dsd_fast import segment, ImageInputError\n"
            "try:\n    segment(sys.argv[1], steps=1, ensemble=1)\n"
            "except ImageInputError as e:\n    print('refused:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True,
                          text=True, timeout=60)                  # hung forever before
    assert "refused:" in proc.stdout and "not a regular file" in proc.stdout, proc.stderr


# ----------------------------------------------------------------------------- weak spots

def test_decompression_bomb_has_one_message_in_api_and_cli(tmp_path, tiny_model, ckpt,
                                                           monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(_pattern(100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)          # 10,000 px > 2 x 1000
    with pytest.raises(ImageInputError, match="too large to decode safely"):
        segment(path, steps=1, ensemble=1, model=tiny_model)


@pytest.mark.parametrize("args, message", [
    (["--steps", "300"], "--steps must be an integer in 1..250"),
    (["--seed", "99999999999999999999"], "--seed must be an integer in 0.."),
    (["--seed", "-1"], "--seed must be"),
])
def test_cli_values_out_of_range_are_usage_errors(tmp_path, ckpt, capsys, args, message):
    (tmp_path / "in").mkdir()
    Image.fromarray(_pattern(20, 30)).save(tmp_path / "in" / "a.png")
    rc = main(["segment", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "out"),
               "--checkpoint", ckpt, "--threads", "1", "-q", "--ensemble", "1", *args])
    assert rc == 2 and message in capsys.readouterr().err


def test_output_folder_that_cannot_be_made_is_a_usage_error(tmp_path, ckpt, capsys):
    (tmp_path / "in").mkdir()
    Image.fromarray(_pattern(20, 30)).save(tmp_path / "in" / "a.png")
    (tmp_path / "afile").write_text("x")
    rc = main(["segment", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "afile" / "sub"),
               "--checkpoint", ckpt, *FAST])
    assert rc == 2 and "cannot write into the output folder" in capsys.readouterr().err


def test_api_seed_and_batch_size_are_checked(tiny_model):
    img = torch.rand(3, 8, 8)
    for bad in (-1, 2 ** 70, 1.5):
        with pytest.raises(ValueError, match="seed"):
            segment(img, steps=1, ensemble=1, model=tiny_model, seed=bad)


def _pairs(tmp_path, n=2, size=(20, 30), gt_ext="png"):
    img, msk = tmp_path / "img", tmp_path / "msk"
    img.mkdir(), msk.mkdir()
    for i in range(n):
        Image.fromarray(_pattern(*size)).save(img / f"p{i}.png")
        m = np.zeros(size, np.uint8)
        m[5:15, 5:20] = 255
        Image.fromarray(m).save(msk / f"p{i}.{gt_ext}", **({"quality": 30} if gt_ext == "jpg"
                                                           else {}))
    return img, msk


@pytest.mark.parametrize("case", ["empty", "missing_gt", "mis_sized", "corrupt_pred"])
def test_eval_data_errors_are_one_line(tmp_path, capsys, case):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    if case != "empty":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(pred / "a_mask.png")
    if case == "mis_sized":
        Image.fromarray(np.zeros((12, 10), np.uint8)).save(gt / "a.png")
    if case == "corrupt_pred":
        (pred / "a_mask.png").write_bytes(b"\x89PNG broken")
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(gt / "a.png")
    rc = main(["eval", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err


def test_eval_binarises_jpeg_ground_truth_at_128_and_says_so(tmp_path, capsys):
    pred, gt = _pairs(tmp_path, n=1, gt_ext="jpg")
    m = np.zeros((20, 30), np.uint8)
    m[5:15, 5:20] = 255
    Image.fromarray(m).save(pred / "p0_mask.png")                   # exactly the truth
    with Image.open(gt / "p0.jpg") as im:
        grey = np.asarray(im)
    assert len(np.unique(grey)) > 2                                  # JPEG rang
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    assert "binarised at > 128" in cap.err
    row = (tmp_path / "metrics.csv").read_text().splitlines()[1].split(",")
    assert float(row[1]) == pytest.approx(2 * np.sum(m > 0) / (np.sum(m > 0)
                                                               + np.sum(grey > 128)), abs=0.02)


@pytest.mark.parametrize("extra, message", [
    (["--steps", "-5"], "total_steps must be an integer >= 1"),
    (["--lr", "nan"], "lr must be a finite number > 0"),
    (["--config", "nope"], "unknown config 'nope'"),
])
def test_train_refuses_bad_options(tmp_path, capsys, extra, message):
    img, msk = _pairs(tmp_path)
    rc = main(["train", "--images", str(img), "--masks", str(msk), "--out",
               str(tmp_path / "run"), "--config", "tiny", "-q", *extra])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_train_data_errors_are_one_line(tmp_path, capsys):
    img, msk = _pairs(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["train", "--config", "tiny", "--steps", "1", "--batch-size", "1", "-q"]
    assert main([*base, "--images", str(empty), "--masks", str(msk), "--out",
                 str(tmp_path / "r1")]) == 2
    (tmp_path / "afile").write_text("x")
    assert main([*base, "--images", str(img), "--masks", str(msk), "--out",
                 str(tmp_path / "afile")]) == 2
    run = tmp_path / "r2"
    run.mkdir()
    (run / "last.pt").write_bytes(b"not a checkpoint")
    assert main([*base, "--images", str(img), "--masks", str(msk), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err and "cannot resume" in err and len(lines) == 3
    assert all(line.startswith("error: ") for line in lines)


def test_results_csv_neutralises_formulas(tmp_path, ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_pattern(20, 30)).save(src / "=cmd|calc!A1.png")
    Image.fromarray(_pattern(20, 30)).save(src / "@sum.png")
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    cells = [line.split(",")[0] for line in (out / "results.csv").read_text().splitlines()[1:]]
    assert sorted(cells) == ["'=cmd|calc!A1", "'@sum"]


def test_long_file_names_are_shortened_and_never_stop_the_run(tmp_path, ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    long = "x" * 245
    Image.fromarray(_pattern(20, 30)).save(src / f"{long}.png")
    Image.fromarray(_pattern(20, 30)).save(src / "zz.png")
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0
    masks = sorted(p.name for p in out.glob("*_mask.png"))
    assert len(masks) == 2 and "zz_mask.png" in masks
    assert all(len(os.fsencode(p.name)) <= 255 for p in out.iterdir())
    # same name on a re-run: it resumes (skips) instead of redoing
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 0


def test_a_per_image_write_error_does_not_end_the_run(tmp_path, ckpt, monkeypatch, capsys):
    from dsd_fast.cli import outputs
    from dsd_fast.io import WriteError
    real = outputs.write_png

    def flaky(target, arr, **kw):
        if Path(target).name.startswith("a_"):
            err = WriteError(f"cannot write {target}: invalid argument")   # e.g. a name the
            err.errno = errno.EINVAL                                      # file system refuses
            raise err
        return real(target, arr, **kw)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in ("a", "b"):
        Image.fromarray(_pattern(20, 30)).save(src / f"{n}.png")
    monkeypatch.setattr(outputs, "write_png", flaky)
    assert main(["segment", str(src), "-o", str(out), "--checkpoint", ckpt, *FAST]) == 1
    assert (out / "b_mask.png").exists() and "a.png" in capsys.readouterr().err


# ----------------------------------------------------------------------------- checkpoints

def _own(tmp_path, tiny_model, **meta_changes):
    from safetensors.torch import load_file, save_file
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    from dsd_fast.checkpoint import read_metadata
    meta = {**read_metadata(path), **meta_changes}
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata=meta)
    return bad


@pytest.mark.parametrize("changes, message", [
    ({"config": "{not json"}, "metadata is not valid"),
    ({"schedule": json.dumps({"kind": "table", "betas": []})}, "non-empty"),
    ({"schedule": json.dumps({"kind": "table", "betas": [0.5, float("nan")]})}, "betas"),
    ({"preprocessing": json.dumps({"image_size": 0})}, "image_size"),
])
def test_bad_metadata_is_refused_at_load(tmp_path, tiny_model, changes, message):
    with pytest.raises(CheckpointError, match=message):
        load_model(_own(tmp_path, tiny_model, **changes))


def test_config_with_image_size_zero_is_refused(tmp_path, tiny_model):
    cfg = json.loads(tiny_model.config.to_json())
    cfg["image_size"] = 0
    with pytest.raises(CheckpointError, match="image_size"):
        load_model(_own(tmp_path, tiny_model, config=json.dumps(cfg)))


def test_non_tensor_and_integer_weights_are_refused(tiny_model):
    sd = dict(tiny_model.state_dict())
    with pytest.raises(CheckpointError, match="not a tensor"):
        load_model({"model": {**sd, "final_conv.bias": 3}})
    with pytest.raises(CheckpointError, match="floating-point"):
        load_model({**sd, "final_conv.weight": sd["final_conv.weight"].round().long()})


def test_upper_case_suffix_is_read_as_safetensors(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "M.SAFETENSORS")
    net = load_model(path)
    assert net.config == tiny_model.config


# ----------------------------------------------------------------------------- found here

def test_numpy_integers_are_integers(tiny_model):
    r = segment(torch.rand(3, 8, 8), steps=np.int64(2), ensemble=np.int32(2),
                batch_size=np.int64(1), seed=np.int64(3), model=tiny_model)[0]
    same = segment(torch.rand(3, 8, 8), steps=2, ensemble=2, seed=3, model=tiny_model)[0]
    assert r.mask.shape == same.mask.shape == (8, 8)


def test_eta_must_be_finite(tiny_model):
    # NaN used to reach the sampler and come back as "the model's predictions diverged"
    with pytest.raises(ValueError, match="eta must be a finite number"):
        segment(torch.rand(3, 8, 8), steps=2, ensemble=1, eta=float("nan"), model=tiny_model)


def test_a_meta_tensor_is_refused_as_an_image(tiny_model):
    with pytest.raises(ImageInputError, match="meta tensor"):
        segment(torch.empty(3, 8, 8, device="meta"), steps=1, ensemble=1, model=tiny_model)


@pytest.mark.parametrize("key", [-5, 2 ** 70, 1.5, None])
def test_any_noise_key_makes_a_valid_seed(tiny_model, key):
    r = segment(torch.rand(3, 8, 8), steps=1, ensemble=1, model=tiny_model, noise_keys=[key],
                refine=None)
    assert r[0].mask.shape == (8, 8)


def test_empty_output_argument_and_broken_links_are_named(tmp_path, ckpt, capsys):
    (tmp_path / "in").mkdir()
    Image.fromarray(_pattern(20, 30)).save(tmp_path / "in" / "a.png")
    # `-o "$OUT"` with OUT unset used to write into the current folder
    assert main(["segment", str(tmp_path / "in"), "-o", "", "--checkpoint", ckpt, *FAST]) == 2
    assert "-o/--output is empty" in capsys.readouterr().err
    os.symlink(tmp_path / "gone.png", tmp_path / "in" / "dead.png")
    assert main(["segment", str(tmp_path / "in" / "dead.png"), "-o", str(tmp_path / "out"),
                 "--checkpoint", ckpt, *FAST]) == 1
    assert "symbolic link to" in capsys.readouterr().err
