"""The denoiser's forward per family: reference network, fast model, fast model in bfloat16.

One forward at batch BATCH (one image's ensemble) and the inputs bench_peers.inputs gives
(a mid-chain timestep for mask diffusion, t = 0 for DiffSeg); each benchmark also checks its
output against the reference network's, so a run with --benchmark-disable (CI) tests every
engine a timed run measures. Groups are per family: pytest-benchmark's table puts the engines
of one network side by side.
"""
from __future__ import annotations

import pytest
import torch
from throughput_cases import (BF16_TOLERANCE, FLOAT32_TOLERANCE, FORWARD_ROUNDS, errors,
                              label)


def timed_forward(benchmark, net, inputs) -> torch.Tensor:
    from dsd_fast.diffusion import flush_denormals

    def forward():
        with torch.no_grad(), flush_denormals():
            return net(*inputs)
    return benchmark.pedantic(forward, rounds=FORWARD_ROUNDS, warmup_rounds=1)


def test_reference(benchmark, case, reference_output):
    label(benchmark, case, f"forward {case.name}")
    out = timed_forward(benchmark, case.net, case.inputs)
    # the same network on the same inputs: the fixture's output, bit for bit
    assert errors(out, reference_output)["max_error"] == 0


def test_fast(benchmark, case, reference_output):
    from dsd_fast import ops
    if not ops.fast_path_available(torch.device("cpu")):
        pytest.skip("the C++ ops are not built: the fast model would run the reference ops")
    label(benchmark, case, f"forward {case.name}")
    out = timed_forward(benchmark, case.family.fast_model_for(case.net), case.inputs)
    err = errors(out, reference_output)
    benchmark.extra_info.update(err)
    assert err["max_error"] < FLOAT32_TOLERANCE


def test_fast_bf16(benchmark, case, reference_output):
    from dsd_fast.precision import native_bf16, with_precision
    if not native_bf16("cpu"):
        pytest.skip("no native bfloat16 on this CPU (AVX-512 BF16 / AMX): bf16 would be "
                    "float32 under another name")
    label(benchmark, case, f"forward {case.name}")
    net = with_precision(case.family.fast_model_for(case.net), "bf16")
    out = timed_forward(benchmark, net, case.inputs)
    err = errors(out, reference_output)
    benchmark.extra_info.update(err)
    assert err["l2_error"] < BF16_TOLERANCE
