"""Fixtures of the throughput benchmarks (bench/test_*.py, pytest-benchmark); the cases
themselves are in throughput_cases.py.

    make bench                                  timed run, saved under .benchmarks/
    pytest bench --benchmark-only --benchmark-autosave
    pytest bench --benchmark-only --benchmark-compare          against the last saved run
    pytest bench --benchmark-only --benchmark-compare=0001     against a given one
    pytest-benchmark compare .benchmarks/*/*.json              saved runs side by side
    pytest bench --benchmark-disable -q         each benchmark once, as a test (CI)
"""
from __future__ import annotations

import pytest
import torch
# bench/ has no __init__.py: pytest puts this folder on sys.path for its conftest and tests
# (its default "prepend" import mode), so the sibling modules import by name
from throughput_cases import FAMILY_NAMES, FamilyCase, build_case


@pytest.fixture(scope="session", params=FAMILY_NAMES)
def case(request) -> FamilyCase:
    """One FamilyCase per family, built once per session."""
    return build_case(request.param)


@pytest.fixture(scope="session")
def reference_output(case) -> torch.Tensor:
    """The reference network's output on the case's inputs: what every engine is checked to."""
    from dsd_fast.diffusion import flush_denormals
    with torch.no_grad(), flush_denormals():
        return case.net(*case.inputs)


def pytest_benchmark_update_machine_info(config, machine_info):
    import platform

    from dsd_fast import ops
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["dsd_fast_cpu_isa"] = ops.ISA if ops.AVAILABLE else "not built"
    machine_info["platform"] = platform.platform()
