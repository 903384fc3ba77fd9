"""Ahead-of-time compilation of the Triton kernels for sm_80 (A100) and sm_90 (H100/H200) on
this CPU-only machine (ptxas ships with triton): each compiles to a cubin and fits its
block's shared memory on both. A subset of dsd_fast.ops.triton.aot.shape_classes() runs
here (a 64 px FF-Parser alone takes ~2 minutes per architecture); `python
bench/aot_compile.py` compiles all of them.

The compilation runs in a subprocess: this test process may have defined the kernels for
Triton's CPU interpreter (test_triton_kernels.py), which cannot be compiled for a GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import json
from dsd_fast.ops.triton import aot
subset = [aot.ff_parser_class(16), aot.ff_parser_class(8, "bf16"),
          *aot.gn_classes(64, 8, 16), *aot.gn_classes(128, 8, 128, "bf16"),
          aot.gated_class(64, 128, 16), aot.gated_class(768, 1536, 4, "bf16")]
print(json.dumps([{"label": k.label, "cc": cc, **aot.compile_class(k, cc)}
                  for k in subset for cc in aot.ARCHS]))
"""


def test_kernels_compile_for_a100_and_h100_within_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"            # triton 3.9's default, without its warning
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 * 7
    for r in rows:
        assert r["cubin"], r
        assert r["fits"], f"{r['label']} on sm_{r['cc']} needs {r['shared']} B of shared memory"


def test_the_engine_never_launches_the_ff_parser_above_its_limit():
    """The 128 px FF-Parser configuration asked for 262,144 B of shared memory per block
    (measured by compiling it: ~10 minutes of CPU, so not repeated here), above every GPU's
    limit; the launcher refuses such planes and the registered op sends them to cuFFT."""
    from dsd_fast.ops.triton import aot
    from dsd_fast.ops.triton.ff_parser import MAX_SIZE
    assert MAX_SIZE == 64
    sizes = [int(k.label.split()[1].split("x")[0]) for k in aot.shape_classes()
             if k.kernel == "ff_parser"]
    assert max(sizes) == MAX_SIZE and 128 not in sizes
