"""Kernel guards (dsd_fast/ops/guard.py): a kernel that fails or computes the wrong thing is
caught on first use of its input class and replaced by its twin, with one warning.

Without a GPU the real kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET
must be set before the kernel modules are imported, as in test_triton_kernels.py); the
failing and the wrong kernel are injected.
"""
from __future__ import annotations

import os
import warnings

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from dsd_fast.ops import reference as ref  # noqa: E402
from dsd_fast.ops.guard import (KernelGuard, KernelMismatchWarning, close_enough,  # noqa: E402
                                kernel_mode)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def gns_inputs(c=8, s=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, c, s, s, generator=g).to(DEVICE), torch.randn(c, generator=g).to(DEVICE),
            torch.randn(c, generator=g).to(DEVICE), 4, 1e-5)


def twin(x, gamma, beta, groups, eps):
    return ref.group_norm_silu_ref(x, gamma, beta, groups, eps)


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a):
        self.calls += 1
        return self.fn(*a)


def test_a_failing_kernel_is_replaced_by_its_twin_with_one_warning():
    def broken(*a):
        raise RuntimeError("out of resource: shared memory, Required: 262144, Hardware limit: "
                           "232448")
    kernel = Counting(broken)
    guard = KernelGuard("group_norm_silu", kernel, twin)
    args = gns_inputs()
    with pytest.warns(KernelMismatchWarning, match=r"group_norm_silu failed: RuntimeError: out "
                                                   r"of resource.*\(2, 8, 6, 6\) float32"):
        out = guard(*args)
    assert torch.equal(out, twin(*args))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no second warning, no second try
        assert torch.equal(guard(*gns_inputs(seed=1)), twin(*gns_inputs(seed=1)))
    assert kernel.calls == 1 and guard.status()["verified"] == 0


def test_a_wrong_kernel_is_caught_and_other_classes_checked_anew():
    wrong = Counting(lambda *a: twin(*a) * 1.01)       # 1% off: beyond float32 tolerance
    guard = KernelGuard("group_norm_silu", wrong, twin)
    with pytest.warns(KernelMismatchWarning, match="differs from its PyTorch twin by 0.01"):
        guard(*gns_inputs())
    guard(*gns_inputs(seed=2))                         # same class: twin, silently
    assert wrong.calls == 1
    with pytest.warns(KernelMismatchWarning):          # a new class is checked again
        guard(*gns_inputs(c=16))
    assert wrong.calls == 2 and len(guard.status()["refused"]) == 2


def test_a_good_kernel_is_verified_once_then_trusted():
    pytest.importorskip("triton")
    from dsd_fast.ops import triton as kernels
    if not torch.cuda.is_available() and not kernels.INTERPRET:
        pytest.skip("the kernels were imported before TRITON_INTERPRET=1")
    from dsd_fast.ops.triton.group_norm_silu import group_norm_silu
    kernel = Counting(lambda x, g, b, groups, eps: group_norm_silu(x, g, b, groups, eps))
    guard = KernelGuard("group_norm_silu", kernel, twin)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = guard(*gns_inputs())
        second = guard(*gns_inputs(seed=3))
    assert kernel.calls == 2 and guard.status() == {"verified": 1, "refused": {}}
    assert close_enough(first, twin(*gns_inputs()))[0]
    assert close_enough(second, twin(*gns_inputs(seed=3)))[0]


def test_tolerances_are_per_dtype_and_can_fail():
    w = torch.linspace(-1, 1, 100)
    assert close_enough(w + 1e-6, w)[0] and not close_enough(w + 1e-3, w)[0]
    wb = w.to(torch.bfloat16)
    assert close_enough(wb, wb)[0] and not close_enough(wb * 1.1, wb)[0]
    assert not close_enough(w.double(), w)[0]                  # dtype must match
    assert not close_enough(torch.full_like(w, float("nan")), w)[0]


def test_kernel_mode_from_the_environment(monkeypatch):
    from dsd_fast import ops
    for value, mode in (("", "auto"), ("triton", "triton"), ("REFERENCE", "reference")):
        monkeypatch.setenv("DSD_FAST_KERNELS", value)
        assert kernel_mode() == mode
    monkeypatch.setenv("DSD_FAST_KERNELS", "fastest")
    with pytest.warns(RuntimeWarning, match="not one of"):
        assert kernel_mode() == "auto"
    monkeypatch.setenv("DSD_FAST_KERNELS", "reference")
    if not ops.GPU_KERNELS:
        assert ops.register_gpu_kernels() is False and not ops.GPU_KERNELS
