"""Every build of the C++ kernels this CPU can run (setup.py: one module per instruction set,
dsd_fast/ops/cpu.py picks one at import): the choice from the CPU's flags, DSD_FAST_ISA, and
the full op parity suites (test_cpu_ops.py, test_winograd.py) under each build in its own process (a process
loads one build: each registers the same torch ops)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsd_fast import ops
from dsd_fast.ops import cpu

REPO = Path(__file__).resolve().parents[2]

ZEN4 = set("fpu sse2 avx avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl avx512_bf16".split())
HASWELL = set("fpu sse2 avx avx2 fma".split())
# test_cpu_ops.py's two tests of the reference fallback (each starts a python without any
# build loaded): the same under every build
NO_BUILD_TESTS = ("test_disable_env_forces_reference_fallback",
                  "test_missing_extension_warns_once_with_build_command")


def test_builds_chosen_from_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(cpu, "_is_x86", lambda: True)
    assert cpu.supported_isas(ZEN4) == ["avx512", "avx2", "portable"]
    assert cpu.supported_isas(HASWELL) == ["avx2", "portable"]
    # AVX-512 F without VL/BW/DQ (Xeon Phi) does not run the avx512 build
    assert cpu.supported_isas(HASWELL | {"avx512f", "avx512cd"}) == ["avx2", "portable"]
    assert cpu.supported_isas({"fpu", "sse2"}) == ["portable"]
    monkeypatch.setattr(cpu, "_is_x86", lambda: False)
    assert cpu.supported_isas(ZEN4) == ["portable"]


def test_requested_build_is_taken_only_when_the_cpu_runs_it():
    both = ["avx2", "portable"]
    assert cpu.choose_isa(None, both) == ("avx2", None)
    assert cpu.choose_isa("Portable ", both) == ("portable", None)
    isa, warning = cpu.choose_isa("avx512", both)
    assert isa == "avx2" and "cannot run" in warning and "avx2, portable" in warning
    isa, warning = cpu.choose_isa("neon", both)
    assert isa == "avx2" and "not one of" in warning


@pytest.mark.skipif(not ops.AVAILABLE, reason="the C++ extension is not built")
def test_the_best_build_is_loaded_by_default():
    if os.environ.get(cpu.ISA_ENV):
        pytest.skip(f"{cpu.ISA_ENV} is set for this run")
    assert ops.ISA == cpu.supported_isas()[0]


@pytest.mark.skipif(not ops.AVAILABLE, reason="the C++ extension is not built")
@pytest.mark.parametrize("isa", cpu.ISAS)
def test_op_parity_suite_passes_under_every_build(isa):
    if isa not in cpu.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    if isa == ops.ISA:
        pytest.skip(f"{isa} is this process's build: the suites run it here")
    env = {**os.environ, cpu.ISA_ENV: isa}
    # One process per build: it says which build it loaded, then runs the suites (pytest.main)
    # without the two tests of the no-build fallback, which load no build and run in the
    # main suite.
    args = ["-q", "-rs", "-p", "no:cacheprovider", "tests/ops/test_cpu_ops.py",
            "tests/ops/test_winograd.py",
            *(f"--deselect=tests/ops/test_cpu_ops.py::{name}" for name in NO_BUILD_TESTS)]
    code = ("import sys\nimport pytest\nfrom dsd_fast import ops\n"
            "print('loaded build', ops.ISA, flush=True)\n"
            f"sys.exit(pytest.main({args!r}))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    first = run.stdout.split("\n", 1)[0]
    assert first == f"loaded build {isa}", run.stdout[-3000:] + run.stderr[-2000:]
    tail = run.stdout[-3000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert " passed" in run.stdout and f"{len(NO_BUILD_TESTS)} deselected" in run.stdout, tail
    # Every op test runs under every build; the only skips allowed are the bfloat16 Winograd
    # kernel's, which is in the AVX-512 build alone (-rs lists each skip with its reason).
    skips = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("AVX512_BF16" in line for line in skips), tail
    if isa == "avx512" and "avx512_bf16" in (cpu.cpu_flags() or ()):
        assert not skips, tail
