"""`dsd-fast export --onnx`: every family's denoiser as ONNX, run in ONNX Runtime against the
reference network (within 1e-4 of scale), fixed and dynamic batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript", reason="the [onnx] extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")

from dsd_fast import save_model  # noqa: E402
from dsd_fast.cli import main  # noqa: E402


def run_ort(path, *arrays):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), arrays)})[0]


def close(got, want):
    return np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_dermosegdiff_exports_through_the_command_line(tmp_path, tiny_ff_model, capsys):
    ckpt = save_model(tiny_ff_model, tmp_path / "m.safetensors")
    out = tmp_path / "m.onnx"
    assert main(["export", "--onnx", str(out), "--checkpoint", str(ckpt), "--batch", "2",
                 "--dynamic-batch"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    for b in (2, 3):                                        # the batch axis is free
        x, img, t = torch.randn(b, 1, 16, 16), torch.rand(b, 3, 16, 16), torch.arange(b) * 70
        with torch.no_grad():
            want = tiny_ff_model(x, img, t).numpy()
        assert close(run_ort(out, x, img, t), want)
    assert not list(tmp_path.glob("*.dsd.tmp"))


def test_medsegdiff_and_diffseg_export(tmp_path):
    from dsd_fast.cli.export import export_onnx
    from dsd_fast.families.diffseg import DIFFSEG, DIFFSEG_CONFIGS
    from dsd_fast.families.diffseg.pipeline import DiffSegPipeline
    from dsd_fast.families.medsegdiff import MEDSEGDIFF, MSD_CONFIGS
    torch.manual_seed(0)
    msd = MEDSEGDIFF.build_reference(MSD_CONFIGS["msd_tiny"]).eval()
    (path,) = export_onnx(msd, tmp_path / "msd.onnx", batch=2)
    x, img, t = torch.randn(2, 1, 16, 16), torch.rand(2, 3, 16, 16), torch.tensor([5, 900])
    with torch.no_grad():
        assert close(run_ort(path, x, img, t), msd(x, img, t).numpy())
    pair = DiffSegPipeline(*(DIFFSEG.build_reference(DIFFSEG_CONFIGS["diffseg_tiny"]).eval()
                             for _ in range(2)))
    paths = export_onnx(pair, tmp_path / "ds.onnx", batch=2)
    assert [p.name for p in paths] == ["ds.have.onnx", "ds.no.onnx"]
    x, t = torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        assert close(run_ort(paths[1], x, t), pair.no(x, t).numpy())


def test_export_needs_an_output(capsys):
    with pytest.raises(SystemExit):
        main(["export"])
