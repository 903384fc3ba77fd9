"""`dsd-fast export --onnx OUT`: a family's denoiser as an ONNX model, for ONNX Runtime,
OpenVINO or TensorRT users.

The reference network is exported (the fused C++ ops are not ONNX operators), through
torch.onnx's dynamo exporter (needs `onnxscript`): inputs `x_t`, `image`, `t` for the
mask-diffusion families (`x_t`, `t` for a DiffSeg denoiser), one output, the network's raw
prediction, exactly as `net(...)` computes it in dsd_fast (checked in ONNX Runtime to 1e-4
of scale by tests/cli/test_export.py). A fixed batch by default; `dynamic_batch` makes the
batch axis free. A DiffSeg pair is written as two files, OUT.have.onnx and OUT.no.onnx.
The sampler, preprocessing and postprocessing stay outside: the model is one step.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from ..io import atomic_write_path


def _export_one(net, family, path: Path, batch: int, dynamic_batch: bool) -> Path:
    args, names = family.example_inputs(family.config_of(net), batch)
    dynamic = None
    if dynamic_batch:
        b = torch.export.Dim("batch", min=1, max=4096)
        dynamic = {n: {0: b} for n in names}

    def write(tmp: str) -> None:
        quiet = io.StringIO()
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with torch.no_grad(), contextlib.redirect_stdout(quiet):
            torch.onnx.export(net.eval(), args, tmp, dynamo=True, input_names=list(names),
                              output_names=["prediction"], dynamic_shapes=dynamic,
                              external_data=False)
    return atomic_write_path(path, write)


def export_onnx(model, path, batch: int = 5, dynamic_batch: bool = False) -> list[Path]:
    """`model`: a Pipeline, a DiffSegPipeline, a network or a checkpoint path / bundled name.
    Returns the files written."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise ImportError("exporting to ONNX needs the [onnx] extra: pip install "
                          "'dsd_fast[onnx]' (onnx, onnxscript, onnxruntime)") from None
    from ..api import as_pipeline
    if isinstance(model, torch.nn.Module):
        from ..families import family_of_network
        fam = family_of_network(model)
        return [_export_one(model, fam, Path(path), batch, dynamic_batch)]
    pipe = as_pipeline(model)
    path = Path(path)
    nets = pipe.networks()
    if len(nets) == 1:
        return [_export_one(next(iter(nets.values())), pipe.family, path, batch, dynamic_batch)]
    stem = path.with_suffix("")            # several networks (a DiffSeg pair): OUT.<part>.onnx
    return [_export_one(net, pipe.family, stem.with_name(f"{stem.name}.{part}.onnx"), batch,
                        dynamic_batch) for part, net in nets.items()]
