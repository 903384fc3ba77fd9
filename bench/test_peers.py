"""The same forwards in the engines users would reach for: ONNX Runtime (the model exported
by `dsd-fast export --onnx`'s code) and OpenVINO (converted from the torch module: its ONNX
reader rejects the FF-parser's DFT nodes; float32, and its bf16 hint as the bf16 peer), each
skipped where it is not installed (the [onnx] and [bench] extras). Same inputs, threads and
groups as test_forward.py, so each family's table compares them with the reference and fast
engines. Settings as bench/bench_peers.py, whose input helper builds the inputs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from throughput_cases import (BF16_TOLERANCE, FLOAT32_TOLERANCE, FORWARD_ROUNDS, errors,
                              label)


@pytest.fixture(scope="session")
def onnx_file(case, tmp_path_factory):
    pytest.importorskip("onnxscript", reason="the ONNX export needs the [onnx] extra")
    from dsd_fast.cli.export import export_onnx
    path = tmp_path_factory.mktemp("onnx") / f"{case.name}.onnx"
    (written,) = export_onnx(case.net, path, batch=case.inputs[0].shape[0])
    return written


def test_onnxruntime(benchmark, case, reference_output, onnx_file):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(onnx_file), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), case.inputs)}
    label(benchmark, case, f"forward {case.name}")
    out = benchmark.pedantic(lambda: sess.run(None, feeds), rounds=FORWARD_ROUNDS,
                             warmup_rounds=1)
    err = errors(out, reference_output)
    benchmark.extra_info.update(err)
    assert err["max_error"] < FLOAT32_TOLERANCE


@pytest.fixture(scope="session")
def openvino_model(case):
    """The case's network converted to OpenVINO's model once per session: the conversion
    (tracing and OpenVINO's graph passes, 10-20 s on one core) does not depend on the
    precision, which is compile_model's hint; each precision compiles its own copy."""
    ov = pytest.importorskip("openvino")
    return ov.convert_model(case.net, example_input=case.inputs)


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_openvino(benchmark, case, reference_output, openvino_model, precision):
    ov = pytest.importorskip("openvino")
    if precision == "bf16":
        from dsd_fast.precision import native_bf16
        if not native_bf16("cpu"):
            pytest.skip("no native bfloat16 on this CPU")
    req = ov.Core().compile_model(openvino_model, "CPU", {
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": precision}).create_infer_request()
    feeds = [a.numpy() for a in case.inputs]
    label(benchmark, case, f"forward {case.name}")
    out = benchmark.pedantic(lambda: [np.array(o) for o in req.infer(feeds).to_tuple()],
                             rounds=FORWARD_ROUNDS, warmup_rounds=1)
    err = errors(out, reference_output)
    benchmark.extra_info.update(err)
    if precision == "f32":
        assert err["max_error"] < FLOAT32_TOLERANCE
    else:
        assert err["l2_error"] < BF16_TOLERANCE
