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
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png",
                                                     "b_mask.png", "b_overlay.png"]
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
