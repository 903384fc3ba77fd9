"""The minimal `dsd-fast segment` command."""
import numpy as np
from PIL import Image

from dsd_fast import save_model
from dsd_fast.cli import main


def test_segment_writes_masks_outside_the_input_folder(tmp_path, tiny_model):
    src = tmp_path / "in"
    src.mkdir()
    for name, size in [("a", (30, 20)), ("b", (11, 17))]:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, size + (3,), dtype=np.uint8)).save(src / f"{name}.png")
    (src / "notes.txt").write_text("not an image")
    ckpt = save_model(tiny_model, tmp_path / "m.safetensors")
    out = tmp_path / "out"
    rc = main(["segment", str(src), "-o", str(out), "--checkpoint", str(ckpt), "--steps", "2",
               "--ensemble", "2", "-q"])
    assert rc == 0
    per_image = ["_mask.png", "_overlay.png", "_prob.png", "_uncertainty.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".dsd-fast", "index.html", "results.csv", "results.json"]
        + [f"{n}{s}" for n in "ab" for s in per_image])
    assert np.array(Image.open(out / "b_overlay.png")).shape == (11, 17, 3)
    m = np.array(Image.open(out / "a_mask.png"))
    assert m.shape == (30, 20) and set(np.unique(m)) <= {0, 255}
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "b.png", "notes.txt"]


def test_refuses_output_inside_input_folder(tmp_path, tiny_model, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    ckpt = save_model(tiny_model, tmp_path / "m.safetensors")
    rc = main(["segment", str(tmp_path), "-o", str(tmp_path / "masks"), "--checkpoint", str(ckpt)])
    assert rc == 2 and "inside an input folder" in capsys.readouterr().err
    assert not (tmp_path / "masks").exists()


def test_corrupt_input_is_reported_and_exit_status_nonzero(tmp_path, tiny_model, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "ok.png")
    (src / "bad.png").write_bytes(b"garbage")
    ckpt = save_model(tiny_model, tmp_path / "m.safetensors")
    rc = main(["segment", str(src), "-o", str(tmp_path / "o"), "--checkpoint", str(ckpt),
               "--steps", "1", "--ensemble", "1", "-q", "--no-overlay"])
    assert rc == 1
    assert "bad.png" in capsys.readouterr().err
    assert (tmp_path / "o" / "ok_mask.png").exists() and not (tmp_path / "o" / "bad_mask.png").exists()


def _save_mask(path, mask):
    Image.fromarray((mask * 255).astype(np.uint8)).save(path)


def test_eval_writes_csv_and_summary(tmp_path, capsys):
    import csv
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    a = np.zeros((10, 12), bool)
    a[2:8, 3:9] = True
    b = np.zeros((10, 12), bool)
    b[2:8, 3:6] = True                       # half of a: Dice 2*18/(18+36) = 2/3
    _save_mask(pred / "x_mask.png", a), _save_mask(gt / "x.png", a)
    _save_mask(pred / "y_mask.png", b), _save_mask(gt / "y.png", a)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(pred / "y_overlay.png")  # ignored
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "o")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "o" / "metrics.csv")))
    assert [r["image"] for r in rows] == ["x", "y"]
    assert list(rows[0]) == ["image", "dice", "iou", "threshold_jaccard", "sensitivity",
                             "specificity", "accuracy", "hd95"]
    assert float(rows[0]["dice"]) == 1.0 and abs(float(rows[1]["dice"]) - 2 / 3) < 1e-6
    assert float(rows[1]["threshold_jaccard"]) == 0.0        # J = 0.5 < 0.65
    out = capsys.readouterr().out
    assert "dice" in out and "0.8333" in out                 # mean Dice (1 + 2/3) / 2


def test_eval_size_mismatch_names_the_file(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _save_mask(pred / "z_mask.png", np.zeros((5, 5), bool))
    _save_mask(gt / "z.png", np.zeros((6, 5), bool))
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path)]) == 2
    assert "error: z: prediction size (5, 5) differs" in capsys.readouterr().err


def test_segment_with_ground_truth_scores_as_it_goes(tmp_path, tiny_model, capsys):
    import csv
    src, gt = tmp_path / "in", tmp_path / "gt"
    src.mkdir(), gt.mkdir()
    for name in ("p", "q"):
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (14, 18, 3), dtype=np.uint8)).save(src / f"{name}.png")
        _save_mask(gt / f"{name}.png", np.ones((14, 18), bool))
    ckpt = save_model(tiny_model, tmp_path / "m.safetensors")
    rc = main(["segment", str(src), "-o", str(tmp_path / "o"), "--checkpoint", str(ckpt),
               "--steps", "1", "--ensemble", "1", "-q", "--gt", str(gt)])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "o" / "metrics.csv")))
    assert [r["image"] for r in rows] == ["p", "q"]
    from dsd_fast.metrics import dice
    pred = np.array(Image.open(tmp_path / "o" / "p_mask.png")) > 0
    assert abs(float(rows[0]["dice"]) - dice(pred, np.ones((14, 18), bool))) < 1e-6


def test_segment_a_medsegdiff_state_dict_with_model_settings(tmp_path, capsys):
    """A bare MedSegDiff Unet state dict on the command line; --model-setting says what the
    file does not (here its schedule length), and a wrong key is named."""
    import json

    import torch

    from dsd_fast.families.medsegdiff import MEDSEGDIFF, MSD_CONFIGS
    torch.manual_seed(0)
    net = MEDSEGDIFF.build_reference(MSD_CONFIGS["msd_tiny"])
    torch.save(net.state_dict(), tmp_path / "unet.pt")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(
        src / "a.png")
    base = ["segment", str(src), "--checkpoint", str(tmp_path / "unet.pt"), "--steps", "3",
            "--ensemble", "2", "--threads", "1", "-q"]
    assert main([*base, "-o", str(tmp_path / "o"), "--model-setting", "timesteps=100"]) == 0
    rec = json.loads((tmp_path / "o" / "results.json").read_text())
    assert rec["settings"]["model_settings"] == {"timesteps": 100}
    assert Image.open(tmp_path / "o" / "a_mask.png").size == (28, 20)
    assert main([*base, "-o", str(tmp_path / "o2"), "--model-setting", "heads=2"]) == 2
    assert "unknown MedSegDiff settings ['heads']" in capsys.readouterr().err


def test_doctor_reports_every_op_and_fails_on_a_wrong_one(capsys, monkeypatch):
    from dsd_fast import ops
    assert main(["doctor", "--no-timing"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "ops on cpu:" in out and "all checks passed" in out
    for op in ("ff_parser", "group_norm_silu", "gated_conv1x1", "linear_attention",
               "winograd_conv3x3"):
        assert op in out
    if not ops.AVAILABLE:
        return                              # the twins run: nothing of ours to find wrong
    real = ops.gated_conv1x1
    monkeypatch.setattr(ops, "gated_conv1x1", lambda g, w, b, x: real(g, w, b, x) * 1.01)
    assert main(["doctor", "--no-timing"]) == 1
    out = capsys.readouterr().out
    assert "gated_conv1x1" in out and "parity FAILED" in out and "1 check(s) FAILED" in out


def test_gpu_check_writes_its_report_and_skips_gpu_parts_without_one(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    import torch
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path),
                           "--budget-s", "60"], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(doc["sections"]) == {"environment", "tests", "ops", "denoiser", "segment",
                                   "families"}
    assert "ops on cpu:" in doc["sections"]["environment"]["report"]
    assert (tmp_path / "gpu_check.log").read_text().startswith("[environment]")
    if not torch.cuda.is_available():
        assert doc["gpu"] is None and proc.returncode == 0, proc.stderr
        for name in ("tests", "ops", "denoiser", "segment", "families"):
            assert doc["sections"][name] == {"skipped": "no CUDA GPU visible to torch"}
