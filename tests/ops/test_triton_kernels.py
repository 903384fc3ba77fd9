"""Parity of the Triton kernels (dsd_fast/ops/triton/) with pure-torch references.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (numpy), which checks
the indexing, masking, padding and arithmetic of each kernel but not GPU-only behaviour
(compilation, register pressure, tensor-core dtypes, streams); the tests marked
`needs_cuda` cover that when a GPU is present. References are computed here in float64
from torch.fft / F.group_norm / F.conv2d, independently of the kernels.

Tolerances, checked as |got - want| <= atol + rtol * |want| (first mismatches printed):
  - float32: atol 2e-5, rtol 1e-5. The kernels sum at most 128 float32 products per stage
    (the FF-Parser has 4 stages); measured errors against float64 are <= 4e-6 for the
    data used here, about what torch's own float32 fft/group_norm reach (1.6e-6 / 5e-6).
  - bf16 output: atol 1e-3, rtol 2**-6 (two bf16 ulps): compute is float32, the one
    rounding is the final store; the interpreter truncates fp32 -> bf16 (the GPU rounds to
    nearest), so it can be one ulp off where the GPU is half an ulp off.
  - fp16 output: atol 1e-3, rtol 2**-9 (two fp16 ulps), same reasoning.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    # Triton decides interpreted vs compiled when a kernel is *defined*, i.e. when
    # dsd_fast.ops.triton.<op> is imported, so this must precede that import (and triton's).
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from dsd_fast.ops import triton as kernels  # noqa: E402
from dsd_fast.ops.schemas import SCHEMAS, argument_names  # noqa: E402
from dsd_fast.ops.triton.ff_parser import ff_parser  # noqa: E402
from dsd_fast.ops.triton.gated_conv1x1 import gated_conv1x1  # noqa: E402
from dsd_fast.ops.triton.group_norm_silu import group_norm_silu  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (real Triton compilation)")

if not CUDA and not kernels.INTERPRET:
    pytest.skip("dsd_fast.ops.triton was imported before TRITON_INTERPRET=1 was set, so its kernels are "
                "compiled for a GPU and there is none", allow_module_level=True)

FP32_TOL = (2e-5, 1e-5)
BF16_TOL = (1e-3, 2.0 ** -6)
FP16_TOL = (1e-3, 2.0 ** -9)
INTERPRETER_NO_BF16 = ("the Triton interpreter does not support bf16 in tl.dot: it holds bf16 "
                       "as uint16 and multiplies the raw bits (triton 3.9 create_dot)")


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: tuple[float, float], what: str):
    """|got - want| <= atol + rtol |want| elementwise; on failure, list the first mismatches."""
    atol, rtol = tol
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got64, want64 = got.detach().double().cpu(), want.detach().double().cpu()
    err = (got64 - want64).abs()
    bad = ~(err <= atol + rtol * want64.abs())            # NaN counts as bad
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        lines = [f"  at {tuple(i)}: got {got64[tuple(i)].item():.7g}, "
                 f"want {want64[tuple(i)].item():.7g}" for i in idx]
        pytest.fail(f"{what}: {int(bad.sum())} of {bad.numel()} elements off (max err "
                    f"{err.nan_to_num(float('inf')).max().item():.3g}, atol {atol}, rtol {rtol})"
                    "\n" + "\n".join(lines))


# ----------------------------------------------------------------------------- references

def ff_parser_ref(x, weight):
    """irfft2(rfft2(x, ortho) * complex(weight), s=(H, W), ortho) in float64."""
    spec = torch.fft.rfft2(x.double(), norm="ortho")
    spec = spec * torch.view_as_complex(weight.double().contiguous())
    return torch.fft.irfft2(spec, s=x.shape[-2:], norm="ortho")


def group_norm_silu_ref(x, gamma, beta, groups, eps, scale=None, shift=None):
    u = F.group_norm(x.double(), groups, gamma.double(), beta.double(), eps)
    if scale is not None:
        u = u * (scale.double().reshape(*scale.shape[:2], 1, 1) + 1) \
            + shift.double().reshape(*shift.shape[:2], 1, 1)
    return F.silu(u)


def gated_conv1x1_ref(g, weight, bias, x):
    return F.conv2d(g.double(), weight.double(), bias.double()) * x.double()


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


# ----------------------------------------------------------------------------- ff_parser

# (B, C, H, W): the network's levels 4..64 (larger planes go to cuFFT, see
# test_ff_parser_routes_large_planes_to_the_twin), odd channel counts, batch 1, non-square
# and odd planes.
FF_SHAPES = [(1, 3, 4, 4), (2, 5, 8, 8), (1, 3, 16, 16), (2, 1, 32, 32), (1, 2, 64, 64),
             (1, 2, 5, 7), (1, 3, 6, 12)]


@pytest.mark.parametrize("shape", FF_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ff_parser_float32(shape):
    torch.manual_seed(0)
    B, C, H, W = shape
    # A random complex gate (not the identity init): its imaginary DC / Nyquist entries make
    # the spectrum non-Hermitian, which is where irfft2's "ignore those imaginary parts"
    # rule shows.
    x, w = randn(B, C, H, W), randn(C, H, W // 2 + 1, 2)
    assert_close(ff_parser(x, w), ff_parser_ref(x, w), FP32_TOL, f"ff_parser {shape}")


def test_ff_parser_identity_gate_is_identity():
    torch.manual_seed(1)
    x = randn(2, 3, 8, 16)
    w = torch.zeros(3, 8, 9, 2, device=DEVICE)
    w[..., 0] = 1.0
    assert_close(ff_parser(x, w), x, FP32_TOL, "identity gate")


def test_ff_parser_out_writes_only_its_channel_slice():
    torch.manual_seed(2)
    B, C, H, W, c0, total = 2, 3, 8, 8, 2, 7
    x, w = randn(B, C, H, W), randn(C, H, W // 2 + 1, 2)
    buf = torch.full((B, total, H, W), 7.25, device=DEVICE)      # cat(x, g)-style buffer
    ret = ff_parser(x, w, out=buf[:, c0:c0 + C])
    assert ret.data_ptr() == buf[:, c0:c0 + C].data_ptr()
    assert_close(buf[:, c0:c0 + C], ff_parser_ref(x, w), FP32_TOL, "out slice")
    others = torch.cat([buf[:, :c0], buf[:, c0 + C:]], dim=1)
    assert torch.equal(others, torch.full_like(others, 7.25)), "channels outside the slice changed"


def test_ff_parser_strided_input():
    torch.manual_seed(3)
    x = randn(2, 4, 16, 16).to(memory_format=torch.channels_last)
    w = randn(4, 16, 9, 2)
    assert_close(ff_parser(x, w), ff_parser_ref(x, w), FP32_TOL, "channels_last x")


def test_ff_parser_bf16():
    torch.manual_seed(4)
    x, w = randn(2, 3, 16, 16, dtype=torch.bfloat16), randn(3, 16, 9, 2)
    y = ff_parser(x, w)
    assert y.dtype == torch.bfloat16
    assert_close(y, ff_parser_ref(x, w), BF16_TOL, "ff_parser bf16")


def test_ff_parser_rejects_bad_shapes():
    x = randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"weight must be \(C, H, W//2\+1, 2\)"):
        ff_parser(x, randn(2, 8, 8, 2))
    with pytest.raises(ValueError, match="planes from 1x1 to 64x64"):
        ff_parser(randn(1, 1, 4, 256), randn(1, 4, 129, 2))
    with pytest.raises(ValueError, match="out must be"):
        ff_parser(x, randn(2, 8, 5, 2), out=randn(1, 3, 8, 8))


# ----------------------------------------------------------------------------- group_norm_silu

# (B, C, H, W, groups, with scale/shift, channels_last). One-chunk groups take the single
# launch path; (16, 64x64, 8), (8, 128x128, 2) and (256 channels, 1 group) take the
# two-launch chunked path (and the last one several channel blocks).
GN_CASES = [(1, 3, 4, 4, 1, False, False), (2, 6, 8, 8, 3, True, False),
            (2, 64, 16, 16, 8, True, True), (1, 5, 32, 32, 5, True, False),
            (2, 16, 64, 64, 8, True, True), (1, 8, 128, 128, 2, True, False),
            (1, 256, 8, 8, 1, False, True)]


@pytest.mark.parametrize("case", GN_CASES, ids=lambda c: "-".join(map(str, c)))
def test_group_norm_silu_float32(case):
    torch.manual_seed(0)
    B, C, H, W, G, with_ss, nhwc = case
    # offset mean: a sum-of-squares variance would lose digits here, Chan/two-pass does not
    x = randn(B, C, H, W) * 3 + 5
    if nhwc:
        x = x.to(memory_format=torch.channels_last)
    gamma, beta = randn(C), randn(C)
    scale, shift = (randn(B, C), randn(B, C)) if with_ss else (None, None)
    y = group_norm_silu(x, gamma, beta, G, 1e-5, scale, shift)
    assert_close(y, group_norm_silu_ref(x, gamma, beta, G, 1e-5, scale, shift), FP32_TOL,
                 f"group_norm_silu {case}")
    assert y.is_contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


def test_group_norm_silu_accepts_b_c_1_1_scale():
    torch.manual_seed(1)
    x, gamma, beta = randn(2, 8, 8, 8), randn(8), randn(8)
    scale, shift = randn(2, 8, 1, 1), randn(2, 8, 1, 1)       # as ResnetBlock passes them
    assert_close(group_norm_silu(x, gamma, beta, 4, 1e-5, scale, shift),
                 group_norm_silu_ref(x, gamma, beta, 4, 1e-5, scale, shift), FP32_TOL,
                 "(B, C, 1, 1) scale/shift")


def test_group_norm_silu_strided_views():
    torch.manual_seed(3)
    gamma, beta = randn(6), randn(6)
    buf = randn(2, 10, 8, 8)
    for x in (buf[:, 2:8], buf[:, 2:8].transpose(2, 3)):    # channel slice; unflattenable (H, W)
        assert_close(group_norm_silu(x, gamma, beta, 3, 1e-5),
                     group_norm_silu_ref(x, gamma, beta, 3, 1e-5), FP32_TOL, "strided view")


def test_group_norm_silu_bf16():
    torch.manual_seed(2)
    x = randn(2, 16, 16, 16, dtype=torch.bfloat16)
    gamma, beta, scale, shift = randn(16), randn(16), randn(2, 16), randn(2, 16)
    y = group_norm_silu(x, gamma, beta, 4, 1e-5, scale, shift)
    assert y.dtype == torch.bfloat16
    assert_close(y, group_norm_silu_ref(x, gamma, beta, 4, 1e-5, scale, shift), BF16_TOL,
                 "group_norm_silu bf16")


def test_group_norm_silu_rejects_bad_args():
    x = randn(1, 6, 4, 4)
    with pytest.raises(ValueError, match="must be >= 1 and divide"):
        group_norm_silu(x, randn(6), randn(6), 4, 1e-5)
    with pytest.raises(ValueError, match="both scale and shift"):
        group_norm_silu(x, randn(6), randn(6), 3, 1e-5, randn(1, 6), None)


# ----------------------------------------------------------------------------- gated_conv1x1

# (B, Cg, Cx, H, W, channels_last): odd channel counts, batch 1, several K steps (Cg 33,
# 128), several output-channel tiles (Cx 70), ragged pixel tiles.
GC_CASES = [(1, 3, 5, 4, 4, False), (2, 7, 9, 8, 8, True), (2, 64, 64, 16, 16, False),
            (1, 33, 17, 32, 32, True), (2, 128, 64, 8, 8, False), (1, 40, 70, 5, 7, False),
            (1, 16, 16, 64, 64, False)]


@pytest.mark.parametrize("case", GC_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gated_conv1x1_float32(case):
    torch.manual_seed(0)
    B, CG, CX, H, W, nhwc = case
    g, x = randn(B, CG, H, W), randn(B, CX, H, W)
    if nhwc:
        g, x = g.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    weight, bias = randn(CX, CG, 1, 1) / CG ** 0.5, randn(CX)
    y = gated_conv1x1(g, weight, bias, x)
    assert_close(y, gated_conv1x1_ref(g, weight, bias, x), FP32_TOL, f"gated_conv1x1 {case}")
    assert y.is_contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gated_conv1x1_half(dtype):
    """The half-precision path (tensor-core tl.dot in the input dtype, fp32 accumulator)."""
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip(INTERPRETER_NO_BF16)
    torch.manual_seed(1)
    g, x = randn(2, 40, 8, 8, dtype=dtype), randn(2, 24, 8, 8, dtype=dtype)
    weight, bias = randn(24, 40, 1, 1) / 40 ** 0.5, randn(24)   # float32 weight, as autocast sees it
    y = gated_conv1x1(g, weight, bias, x)
    assert y.dtype == dtype
    # the kernel casts the weight to g's dtype before the dot: so does the reference
    want = gated_conv1x1_ref(g, weight.to(dtype), bias, x)
    assert_close(y, want, BF16_TOL if dtype == torch.bfloat16 else FP16_TOL, f"gated_conv1x1 {dtype}")


def test_gated_conv1x1_rejects_bad_shapes():
    g, x = randn(1, 4, 8, 8), randn(1, 6, 8, 8)
    with pytest.raises(ValueError, match=r"weight must be \(Cx, Cg, 1, 1\)"):
        gated_conv1x1(g, randn(6, 5, 1, 1), randn(6), x)
    with pytest.raises(ValueError, match="must agree in batch and plane size"):
        gated_conv1x1(g, randn(6, 4, 1, 1), randn(6), randn(1, 6, 8, 4))


def test_ff_parser_routes_large_planes_to_the_twin():
    """128 x 128 planes would need more shared memory than a GPU block has (see
    test_triton_aot.py): the registered implementation sends them to the twin (cuFFT on a
    GPU) and keeps the kernel for the rest."""
    from dsd_fast.ops.reference import ff_parser_ref as twin
    impls = kernels._cuda_impls(guarded=False)
    x, w = randn(1, 2, 128, 128), randn(2, 128, 65, 2)
    assert torch.equal(impls["ff_parser"](x, w), twin(x, w))
    out = torch.zeros_like(x)
    impls["ff_parser_out"](x, w, out)
    assert torch.equal(out, twin(x, w))
    small_x, small_w = randn(1, 2, 16, 16), randn(2, 16, 9, 2)
    assert_close(impls["ff_parser"](small_x, small_w), ff_parser_ref(small_x, small_w),
                 FP32_TOL, "kernel below the limit")


# ----------------------------------------------------------------------------- registration

_TEST_NS = "dsd_fast_triton_test"      # look-alike ops: never collide with dsd_fast._C_<isa>
_SCHEMAS = {name: SCHEMAS[name] for name in kernels.TRITON_OPS}


@pytest.fixture(scope="module")
def test_namespace():
    lib = torch.library.Library(_TEST_NS, "DEF")
    for name, schema in _SCHEMAS.items():
        lib.define(name + schema)
    yield _TEST_NS
    # lib stays alive: kernels registered into the namespace hold references to it


def test_register_cuda_impls(test_namespace):
    assert kernels.register_cuda_impls(test_namespace) is True
    for name in _SCHEMAS:
        qualname = f"{test_namespace}::{name}"
        assert qualname in kernels.REGISTERED
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"), qualname
    assert kernels.register_cuda_impls(test_namespace) is True     # idempotent


def test_python_schemas_match_csrc():
    """ops/schemas.py (used without the extension, and by register_cuda_impls' argument
    check) defines exactly what csrc/register.cpp defines."""
    import re
    src = Path(__file__).resolve().parents[2] / "csrc" / "register.cpp"
    if not src.is_file():
        pytest.skip("csrc/register.cpp not present")
    defs = {}
    for body in re.findall(r"m\.def\(\s*((?:\"[^\"]*\"\s*)+)\)", src.read_text()):
        schema = torch._C.parse_schema("dsd_fast::" + "".join(re.findall(r'"([^"]*)"', body)))
        defs[schema.name.split("::")[1]] = [a.name for a in schema.arguments]
    assert sorted(defs) == sorted(SCHEMAS)
    for name, schema in SCHEMAS.items():
        assert argument_names(name) == defs[name], f"{name}: csrc has {defs[name]}"
        parsed = torch._C.parse_schema(f"dsd_fast::{name}{schema}")
        assert [a.name for a in parsed.arguments] == defs[name]


def test_register_cuda_impls_skips_missing_ops():
    if hasattr(torch.ops.dsd_fast, "ff_parser"):
        pytest.skip("dsd_fast ops are defined in this process (the C++ extension is loaded)")
    assert kernels.register_cuda_impls() is False


def test_register_cuda_impls_refuses_mismatched_schema():
    ns = "dsd_fast_triton_badschema"
    lib = torch.library.Library(ns, "DEF")
    lib.define("gated_conv1x1(Tensor x, Tensor weight, Tensor bias, Tensor g) -> Tensor")
    with pytest.warns(UserWarning, match="expected"):
        assert kernels.register_cuda_impls(ns) is False
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::gated_conv1x1", "CUDA")


# ----------------------------------------------------------------------------- GPU only

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [8, 32, 64])
def test_cuda_parity_network_shapes(dtype, size):
    """Batch 5, 64 channels: the network's shapes, compiled for the GPU, fp32 and bf16."""
    torch.manual_seed(0)
    tol = FP32_TOL if dtype == torch.float32 else BF16_TOL
    B, C = 5, 64
    x, w = randn(B, C, size, size, dtype=dtype), randn(C, size, size // 2 + 1, 2)
    assert_close(ff_parser(x, w), ff_parser_ref(x, w), tol, f"cuda ff_parser {size} {dtype}")

    gamma, beta, scale, shift = randn(C), randn(C), randn(B, C), randn(B, C)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        assert_close(group_norm_silu(xf, gamma, beta, 8, 1e-5, scale, shift),
                     group_norm_silu_ref(xf, gamma, beta, 8, 1e-5, scale, shift), tol,
                     f"cuda group_norm_silu {size} {dtype} {fmt}")

    g = randn(B, 2 * C, size, size, dtype=dtype)
    weight, bias = randn(C, 2 * C, 1, 1) / (2 * C) ** 0.5, randn(C)
    assert_close(gated_conv1x1(g, weight, bias, x),
                 gated_conv1x1_ref(g, weight.to(dtype), bias, x), tol,
                 f"cuda gated_conv1x1 {size} {dtype}")


@needs_cuda
def test_cuda_graph_capture_uses_current_stream():
    """A launch on anything but PyTorch's current stream breaks capture or is not replayed."""
    torch.manual_seed(1)
    x, w = randn(2, 8, 32, 32), randn(8, 32, 17, 2)
    gamma, beta = randn(8), randn(8)
    g, weight, bias = randn(2, 4, 32, 32), randn(8, 4, 1, 1), randn(8)

    def step():
        y = ff_parser(x, w)
        return gated_conv1x1(g, weight, bias, group_norm_silu(y, gamma, beta, 4, 1e-5))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):            # warm-up: compile, DFT tables
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    x.copy_(randn(2, 8, 32, 32))
    graph.replay()
    torch.cuda.synchronize()
    want = gated_conv1x1_ref(g, weight, bias, group_norm_silu_ref(
        ff_parser_ref(x, w).float(), gamma, beta, 4, 1e-5).float())
    assert_close(out, want, (1e-4, 1e-4), "graph replay")   # three float32 stages chained


@needs_cuda
def test_cuda_registered_torch_ops():
    from dsd_fast import ops
    if not ops.AVAILABLE:
        pytest.skip("the C++ extension is not built")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.register_cuda_impls() is True
    torch.manual_seed(2)
    x, w = randn(2, 3, 16, 16), randn(3, 16, 9, 2)
    assert_close(torch.ops.dsd_fast.ff_parser(x, w), ff_parser_ref(x, w), FP32_TOL, "op ff_parser")
    buf = torch.zeros(2, 5, 16, 16, device=DEVICE)
    torch.ops.dsd_fast.ff_parser_out(x, w, buf[:, 1:4])
    assert_close(buf[:, 1:4], ff_parser_ref(x, w), FP32_TOL, "op ff_parser_out")
    gamma, beta, scale, shift = randn(3), randn(3), randn(2, 3), randn(2, 3)
    assert_close(torch.ops.dsd_fast.group_norm_silu(x, gamma, beta, 3, 1e-5, scale, shift),
                 group_norm_silu_ref(x, gamma, beta, 3, 1e-5, scale, shift), FP32_TOL,
                 "op group_norm_silu")
    g, weight, bias = randn(2, 5, 16, 16), randn(3, 5, 1, 1), randn(3)
    assert_close(torch.ops.dsd_fast.gated_conv1x1(g, weight, bias, x),
                 gated_conv1x1_ref(g, weight, bias, x), FP32_TOL, "op gated_conv1x1")


def test_op_registry_serves_cpu_with_cpp_and_cuda_with_triton():
    """After registration the dsd_fast ops have a C++ kernel for CPU tensors and the Triton
    kernel for CUDA tensors (checked on the dispatcher: this machine has no GPU to call)."""
    from dsd_fast import ops
    if not ops.AVAILABLE:
        pytest.skip("the C++ extension is not built")
    assert ops.register_gpu_kernels() is True
    for name in ("ff_parser", "ff_parser_out", "group_norm_silu", "gated_conv1x1"):
        q = f"dsd_fast::{name}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(q, "CPU"), q
        assert torch._C._dispatch_has_kernel_for_dispatch_key(q, "CUDA"), q
