"""The fused CPU ops (csrc/, dsd_fast.ops) against their reference twins (dsd_fast.ops.reference).

Tolerances: every comparison is |actual - expected| <= atol + rtol * |expected| elementwise,
with atol = ATOL_REL * max|expected| (so values near zero are judged against the tensor's
scale, not against themselves). The reasons for each op's numbers are next to its asserts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsd_fast.ops import reference as ref
from dsd_fast import ops

REPO = Path(__file__).resolve().parents[2]

needs_ext = pytest.mark.skipif(
    not ops.AVAILABLE,
    reason="dsd_fast._C_<isa> is not built (or DSD_FAST_DISABLE_EXT=1): "
           "pip install --no-build-isolation -e .")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol_rel: float,
                 what: str = "") -> None:
    """Elementwise |a - e| <= atol_rel * max|e| + rtol * |e|; on failure, show the worst few."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    e = expected.double()
    err = (actual.double() - e).abs()
    tol = atol_rel * e.abs().max().clamp_min(1e-30) + rtol * e.abs()
    bad = err > tol
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        rows = [f"  at {tuple(i)}: got {actual[tuple(i)].item():.8g}, "
                f"expected {expected[tuple(i)].item():.8g}" for i in idx]
        worst = (err / tol.clamp_min(1e-30)).max().item()
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements off "
                             f"(worst at {worst:.3g} x tolerance)\n" + "\n".join(rows))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# FF-Parser

# (B, C, H, W): batch 1, odd channel counts (partial 8-channel groups), the network's square
# power-of-two sizes, and sizes off the fast path (odd, non-power-of-two, 1 x 1).
FF_SHAPES = [
    (1, 1, 4, 4), (2, 3, 8, 8), (1, 13, 16, 16), (2, 9, 32, 32), (1, 8, 64, 64),
    (1, 5, 128, 128), (3, 1, 8, 16), (2, 3, 5, 7), (1, 2, 6, 12), (1, 3, 1, 1), (2, 2, 16, 2),
    (1, 3, 80, 80), (2, 3, 20, 20),                      # the default_80 config's levels
]

# float32 FFTs: both sides round at every butterfly stage (error ~ eps * log2(H*W) * scale,
# 2-3e-7 of max|y| measured at 128 x 128), in different orders. 1e-5 of the output's scale
# leaves a 30x margin and still catches any wrong bin, sign or scale (those are O(1) errors).
FF_RTOL, FF_ATOL_REL = 1e-5, 1e-5


def ff_inputs(shape, seed=0):
    b, c, h, w = shape
    x = torch.randn(b, c, h, w, generator=gen(seed))
    weight = torch.randn(c, h, w // 2 + 1, 2, generator=gen(seed + 1))
    return x, weight


@needs_ext
@pytest.mark.parametrize("shape", FF_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ff_parser_matches_torch_fft(shape):
    x, weight = ff_inputs(shape)
    y = ops.ff_parser(x, weight)
    assert_close(y, ref.ff_parser_ref(x, weight), FF_RTOL, FF_ATOL_REL, f"ff_parser {shape}")


@needs_ext
def test_ff_parser_identity_gate_returns_input():
    # The model initialises the gate to 1 + 0i: the op must then be the identity.
    x = torch.randn(2, 5, 32, 32, generator=gen(3))
    weight = torch.zeros(5, 32, 17, 2)
    weight[..., 0] = 1
    assert_close(ops.ff_parser(x, weight), x, FF_RTOL, FF_ATOL_REL, "identity gate")


@needs_ext
@pytest.mark.parametrize("size", [(8, 8), (16, 16), (6, 9)])
def test_ff_parser_drops_imaginary_dc_and_nyquist_like_irfft2(size):
    # A gate that is purely imaginary on the DC and Nyquist columns only: irfft2 keeps the
    # real part of those columns *after* its inverse FFT over H, which is not the same as
    # zeroing their imaginary parts before it. The op must do what torch.fft does.
    h, w = size
    x = torch.randn(2, 3, h, w, generator=gen(4))
    weight = torch.zeros(3, h, w // 2 + 1, 2)
    weight[:, :, 0, 1] = torch.randn(3, h, generator=gen(5))
    if w % 2 == 0:
        weight[:, :, -1, 1] = torch.randn(3, h, generator=gen(6))
    assert_close(ops.ff_parser(x, weight), ref.ff_parser_ref(x, weight), FF_RTOL, FF_ATOL_REL,
                 "imaginary DC/Nyquist gate")


@needs_ext
@pytest.mark.parametrize("layout", ["channel_slice", "transposed", "channels_last"])
def test_ff_parser_non_contiguous_inputs(layout):
    base = torch.randn(3, 12, 16, 16, generator=gen(7))
    if layout == "channel_slice":      # planes contiguous, batch stride of 12 channels
        x = base[:, 2:9]
    elif layout == "transposed":       # planes themselves strided: the op copies them
        x = base[:, :7].transpose(2, 3)
    else:
        x = base[:, :7].contiguous(memory_format=torch.channels_last)
    weight_full = torch.randn(7, 16, 18, 2, generator=gen(8))
    weight = weight_full[:, :, :9]     # non-contiguous weight
    assert not x.is_contiguous() and not weight.is_contiguous()
    assert_close(ops.ff_parser(x, weight), ref.ff_parser_ref(x, weight), FF_RTOL, FF_ATOL_REL,
                 layout)


@needs_ext
@pytest.mark.parametrize("offset", [0, 4])
def test_ff_parser_out_writes_only_its_channel_slice(offset):
    # The use case: write straight into the x part of torch.cat((x, g), dim=1)'s buffer.
    b, c, cg, s = 2, 5, 6, 16
    x, weight = ff_inputs((b, c, s, s), seed=9)
    sentinel = -12345.0
    buf = torch.full((b, c + cg, s, s), sentinel)
    out = buf[:, offset:offset + c]
    result = ops.ff_parser(x, weight, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_close(buf[:, offset:offset + c], ref.ff_parser_ref(x, weight), FF_RTOL, FF_ATOL_REL,
                 "out slice")
    untouched = torch.cat((buf[:, :offset], buf[:, offset + c:]), dim=1)
    assert torch.all(untouched == sentinel), "ff_parser_out wrote outside its slice"


@needs_ext
def test_ff_parser_out_in_place():
    x, weight = ff_inputs((2, 9, 8, 8), seed=10)
    expected = ref.ff_parser_ref(x, weight)
    ops.ff_parser(x, weight, out=x)
    assert_close(x, expected, FF_RTOL, FF_ATOL_REL, "in place")


@needs_ext
def test_ff_parser_rejects_bad_arguments():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.dsd_fast.ff_parser(x, torch.randn(2, 8, 8, 2))
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.dsd_fast.ff_parser(x.double(), torch.randn(2, 8, 5, 2).double())
    out = torch.empty(1, 2, 8, 8).transpose(2, 3)
    with pytest.raises(RuntimeError, match="plane of out must be contiguous"):
        torch.ops.dsd_fast.ff_parser_out(x, torch.randn(2, 8, 5, 2), out)


# --------------------------------------------------------------------------------------
# GroupNorm + FiLM + SiLU

# (B, C, H, W, groups): batch 1, one group, odd sizes (scalar tails), the bottleneck's 4
# groups, 128 x 128 planes.
GN_SHAPES = [(1, 6, 5, 7, 3), (2, 16, 8, 8, 8), (5, 32, 16, 16, 4), (1, 8, 128, 128, 1),
             (2, 24, 4, 4, 8), (3, 5, 9, 3, 5)]

# Statistics in double over float blocks, one folded FMA, an exp with ~2 ulp error and a
# reciprocal with ~1 ulp: a few ulp of the output in total (about 2e-7 of max|y| measured).
# 1e-5 is the brief's relative target.
GN_RTOL, GN_ATOL_REL = 1e-5, 1e-5


@needs_ext
@pytest.mark.parametrize("film", [False, True], ids=["plain", "scale_shift"])
@pytest.mark.parametrize("shape", GN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_group_norm_silu_matches_reference(shape, film):
    b, c, h, w, groups = shape
    g = gen(11)
    x = torch.randn(b, c, h, w, generator=g) * 3 + 1.5     # non-zero mean and unit-free scale
    gamma, beta = torch.randn(c, generator=g), torch.randn(c, generator=g)
    scale = torch.randn(b, c, generator=g) if film else None
    shift = torch.randn(b, c, generator=g) if film else None
    y = ops.group_norm_silu(x, gamma, beta, groups, 1e-5, scale, shift)
    expected = ref.group_norm_silu_ref(x, gamma, beta, groups, 1e-5, scale, shift)
    assert_close(y, expected, GN_RTOL, GN_ATOL_REL, f"group_norm_silu {shape}")


@needs_ext
def test_group_norm_silu_large_mean_and_non_contiguous():
    # Mean 1000x the spread: a one-pass E[x^2] - E[x]^2 in float would lose the variance.
    base = torch.randn(2, 16, 12, 12, generator=gen(12)) * 0.1 + 100.0
    x = base.transpose(2, 3)
    gamma, beta = torch.randn(16, generator=gen(13)), torch.randn(16, generator=gen(14))
    ss = torch.randn(2, 32, 1, 1, generator=gen(15))
    scale, shift = ss.chunk(2, dim=1)                       # (B, C, 1, 1) views, as in Block
    y = ops.group_norm_silu(x, gamma, beta, 4, 1e-5, scale, shift)
    # Oracle: the twin in float64. The float32 twin (torch's group_norm) is itself off by
    # ~2e-5 of the output scale on this input, while the op keeps the mean out of its folded
    # FMA and stays at ~1e-7; so the usual 1e-5, against the float64 result.
    args64 = [t.double() for t in (x, gamma, beta)] + [4, 1e-5, scale.double(), shift.double()]
    expected = ref.group_norm_silu_ref(*args64).float()
    assert_close(y, expected, GN_RTOL, GN_ATOL_REL, "large mean")


@needs_ext
@pytest.mark.parametrize("film", [False, True], ids=["plain", "scale_shift"])
@pytest.mark.parametrize("shape", GN_SHAPES + [(2, 20, 33, 17, 4), (5, 96, 16, 16, 32)],
                         ids=lambda s: "x".join(map(str, s)))
def test_group_norm_silu_channels_last_stays_channels_last(shape, film):
    # NHWC loops (per-channel statistics over pixel runs); channel counts that are not whole
    # vectors (5, 6, 20, 24) go through the tail path of every build.
    b, c, h, w, groups = shape
    g = gen(16)
    x = (torch.randn(b, c, h, w, generator=g) * 3 + 1.5).contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.randn(c, generator=g), torch.randn(c, generator=g)
    scale = torch.randn(b, c, generator=g) if film else None
    shift = torch.randn(b, c, generator=g) if film else None
    y = ops.group_norm_silu(x, gamma, beta, groups, 1e-5, scale, shift)
    if c > 1 and h * w > 1:
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    expected = ref.group_norm_silu_ref(x, gamma, beta, groups, 1e-5, scale, shift)
    assert_close(y, expected, GN_RTOL, GN_ATOL_REL, f"group_norm_silu NHWC {shape}")


@needs_ext
def test_group_norm_silu_channels_last_large_mean():
    # Runs of 32 pixels are two-pass and merged exactly: a mean 1000x the spread keeps its
    # variance (float64 oracle, as for the NCHW path above).
    x = (torch.randn(2, 16, 40, 40, generator=gen(17)) * 0.1 + 100.0).contiguous(
        memory_format=torch.channels_last)
    gamma, beta = torch.randn(16, generator=gen(18)), torch.randn(16, generator=gen(19))
    y = ops.group_norm_silu(x, gamma, beta, 4, 1e-5)
    expected = ref.group_norm_silu_ref(x.double(), gamma.double(), beta.double(), 4, 1e-5).float()
    assert_close(y, expected, GN_RTOL, GN_ATOL_REL, "NHWC large mean")


@needs_ext
def test_group_norm_silu_rejects_bad_groups():
    with pytest.raises(RuntimeError, match="divide the channel count"):
        torch.ops.dsd_fast.group_norm_silu(torch.randn(1, 6, 4, 4), torch.ones(6),
                                           torch.zeros(6), 4, 1e-5)


# --------------------------------------------------------------------------------------
# Gated 1x1 convolution

# (B, Cg, Cx, H, W): output channels not a multiple of the 6-row tile, pixel counts not a
# multiple of the panel (8 / 16 / 32 pixels in the portable / AVX2 / AVX-512 builds; 48
# pixels is whole panels for the first two, not the third), batch 1, the network's
# g_feedback shape (64 -> 128).
GC_SHAPES = [(1, 3, 5, 7, 9), (2, 17, 13, 5, 5), (2, 64, 128, 16, 16), (1, 32, 6, 128, 128),
             (3, 1, 1, 4, 4), (1, 4, 7, 6, 8)]

# A K-term float32 dot product (K <= 64 here) plus bias, times x: summation order differs from
# oneDNN's, error ~ sqrt(K) * eps * sum|w g| ~ 1e-6 of the output scale. 1e-5 as the others.
GC_RTOL, GC_ATOL_REL = 1e-5, 1e-5


@needs_ext
@pytest.mark.parametrize("weight_4d", [True, False], ids=["w4d", "w2d"])
@pytest.mark.parametrize("shape", GC_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gated_conv1x1_matches_reference(shape, weight_4d):
    b, cg, cx, h, w = shape
    g_ = gen(16)
    g = torch.randn(b, cg, h, w, generator=g_)
    x = torch.randn(b, cx, h, w, generator=g_)
    weight = torch.randn(cx, cg, 1, 1, generator=g_) / cg ** 0.5
    bias = torch.randn(cx, generator=g_)
    if not weight_4d:
        weight = weight[:, :, 0, 0]
    assert_close(ops.gated_conv1x1(g, weight, bias, x), ref.gated_conv1x1_ref(g, weight, bias, x),
                 GC_RTOL, GC_ATOL_REL, f"gated_conv1x1 {shape}")


@needs_ext
def test_gated_conv1x1_non_contiguous_inputs():
    buf = torch.randn(2, 20, 8, 8, generator=gen(17))
    g, x = buf[:, :12], buf[:, 12:].transpose(2, 3)          # slices of one cat buffer
    weight = torch.randn(8, 12, 1, 1, generator=gen(18)) / 12 ** 0.5
    bias = torch.randn(8, generator=gen(19))
    assert_close(ops.gated_conv1x1(g, weight, bias, x), ref.gated_conv1x1_ref(g, weight, bias, x),
                 GC_RTOL, GC_ATOL_REL, "non-contiguous")


# --------------------------------------------------------------------------------------
# Linear attention

# (B, C, Co, H, W): the network's planes (64 x 64 with C = 16 and 32, 8 x 8 with C = 128),
# batch 1, channel counts off the vector width (padded in the K sweep) and off the Q sweep's
# 4- or 8-row tiles, pixel counts off the 8-, 16- or 32-pixel panel and the K sweep's pixel
# tiles and chunks (9 x 5, 13 x 11, 6 x 8), a single pixel, Co != C.
LA_SHAPES = [(5, 16, 16, 64, 64), (2, 32, 32, 32, 32), (3, 128, 128, 8, 8), (1, 3, 5, 4, 4),
             (2, 7, 7, 9, 5), (2, 33, 17, 13, 11), (1, 32, 32, 1, 1), (1, 8, 8, 6, 8)]

# The op reassociates the published order (k x^T first, w_v and w_out folded into a 32 x 32
# and a Co x 128 matrix) and sums N-term softmax denominators in another order: against a
# float64 evaluation it was measured at <= 1e-6 of the output's scale, the reference at
# <= 9e-7. 1e-5 of scale leaves a 10x margin; a wrong head split, softmax axis or missing
# 1/sqrt(32) is an O(1) error.
LA_RTOL, LA_ATOL_REL = 1e-5, 1e-5


def la_inputs(shape, seed=0):
    b, c, co, h, w = shape
    g = gen(seed)
    return (torch.randn(b, c, h, w, generator=g), torch.randn(384, c, generator=g) / c ** 0.5,
            torch.randn(co, 128, generator=g) / 128 ** 0.5, torch.randn(co, generator=g))


@needs_ext
@pytest.mark.parametrize("shape", LA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_attention_matches_reference(shape):
    args = la_inputs(shape, seed=30)
    assert_close(ops.linear_attention(*args), ref.linear_attention_ref(*args), LA_RTOL,
                 LA_ATOL_REL, f"linear_attention {shape}")


@needs_ext
def test_linear_attention_sharp_softmax_and_4d_weights():
    # Large logits (a near one-hot softmax over pixels and over channels) stress the max
    # subtraction; 4-d conv weights and a non-contiguous xn are accepted as the module has them.
    xn, wqkv, wout, bout = la_inputs((2, 8, 8, 16, 16), seed=31)
    wqkv = (wqkv * 30).reshape(384, 8, 1, 1)
    wout = wout.reshape(8, 128, 1, 1)
    xt = xn.transpose(2, 3)
    assert_close(ops.linear_attention(xt, wqkv, wout, bout),
                 ref.linear_attention_ref(xt, wqkv, wout, bout), LA_RTOL, LA_ATOL_REL, "sharp")


@needs_ext
def test_linear_attention_online_softmax_across_chunks():
    # The op's pixel softmax runs in chunks of 64 pixels with a running max, in 2 segments
    # merged by their maxima at this size. A pixel whose logits dwarf everything before it,
    # in the last chunk, forces the rescaling of all the sums accumulated so far and a
    # lopsided merge (a missing rescale or merge weight is an O(1) error here).
    xn, wqkv, wout, bout = la_inputs((2, 16, 16, 48, 48), seed=32)
    xn[:, :, 47, 40] = 25.0
    assert_close(ops.linear_attention(xn, wqkv, wout, bout),
                 ref.linear_attention_ref(xn, wqkv, wout, bout), LA_RTOL, LA_ATOL_REL, "spike")


@needs_ext
@pytest.mark.parametrize("shape", LA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_attention_channels_last_stays_channels_last(shape):
    # NHWC in: read as it lies (an NCHW input is first copied pixel-major); NHWC out: each
    # panel's y staged as (Co, NR) and written pixel by pixel (partial panels: 9 x 5, 13 x 11,
    # 1 x 1). Same arithmetic as NCHW, so the same tolerance against the reference; and the
    # NCHW result bit for bit, since only where the floats are read from and written to differs.
    xn, wqkv, wout, bout = la_inputs(shape, seed=33)
    x_cl = xn.contiguous(memory_format=torch.channels_last)
    y = ops.linear_attention(x_cl, wqkv, wout, bout)
    b, _, co, h, w = shape
    if co > 1 and h * w > 1:
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert_close(y, ref.linear_attention_ref(xn, wqkv, wout, bout), LA_RTOL, LA_ATOL_REL,
                 f"linear_attention NHWC {shape}")
    assert torch.equal(y, ops.linear_attention(xn, wqkv, wout, bout))


@needs_ext
def test_linear_attention_rejects_bad_weights():
    xn, wqkv, wout, bout = la_inputs((1, 8, 8, 4, 4))
    with pytest.raises(RuntimeError, match="w_qkv must be"):
        torch.ops.dsd_fast.linear_attention(xn, wqkv[:256], wout, bout)
    with pytest.raises(RuntimeError, match="w_out must be"):
        torch.ops.dsd_fast.linear_attention(xn, wqkv, wout[:, :64], bout)
    with pytest.raises(RuntimeError, match="b_out must be"):
        torch.ops.dsd_fast.linear_attention(xn, wqkv, wout, bout[:3])


# --------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, autograd routing


def _opcheck_cases():
    x, w = ff_inputs((2, 3, 8, 8), seed=20)
    g = gen(21)
    gn_x = torch.randn(2, 8, 5, 5, generator=g)
    return [
        ("ff_parser", (x, w)),
        ("ff_parser_out", (x, w, torch.empty(2, 3, 8, 8))),
        ("group_norm_silu", (gn_x, torch.randn(8, generator=g), torch.randn(8, generator=g), 4,
                             1e-5, torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g))),
        ("group_norm_silu", (gn_x, torch.randn(8, generator=g), torch.randn(8, generator=g), 2,
                             1e-5, None, None)),
        ("group_norm_silu", (gn_x.contiguous(memory_format=torch.channels_last),
                             torch.randn(8, generator=g), torch.randn(8, generator=g), 4,
                             1e-5, torch.randn(2, 8, generator=g), None)),
        ("gated_conv1x1", (torch.randn(2, 6, 5, 5, generator=g), torch.randn(4, 6, 1, 1, generator=g),
                           torch.randn(4, generator=g), torch.randn(2, 4, 5, 5, generator=g))),
        ("linear_attention", la_inputs((2, 5, 3, 6, 7), seed=24)),
        ("linear_attention", (la_inputs((2, 5, 3, 6, 7), seed=25)[0].contiguous(
            memory_format=torch.channels_last), *la_inputs((2, 5, 3, 6, 7), seed=25)[1:])),
    ]


@needs_ext
@pytest.mark.parametrize("name,args", _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    if not hasattr(torch.library, "opcheck"):
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    torch.library.opcheck(getattr(torch.ops.dsd_fast, name).default, args)


@needs_ext
def test_torch_compile_fullgraph_traces_the_ops():
    # fullgraph=True fails on any graph break, so this checks that every op traces through
    # its fake kernel (shapes) and that the out= mutation is functionalised. aot_eager runs
    # the same tracing as inductor without its C++ code generation (under a second instead
    # of ~20 s here); DSD_TEST_COMPILE_BACKEND=inductor runs the full compiler.
    def level(x, g, ffw, gamma, beta, ss, fw, fb):
        b, c = x.shape[:2]
        buf = torch.empty(b, c + g.shape[1], x.shape[2], x.shape[3])
        ops.ff_parser(x, ffw, out=buf[:, :c])
        buf[:, c:] = g
        scale, shift = ss.chunk(2, dim=1)
        h = ops.group_norm_silu(buf, gamma, beta, 4, 1e-5, scale, shift)
        y = ops.gated_conv1x1(h, fw, fb, ops.ff_parser(x, ffw))
        return ops.linear_attention(y, wqkv, wout, bout)

    g_ = gen(22)
    x, ffw = ff_inputs((2, 4, 8, 8), seed=23)
    g = torch.randn(2, 4, 8, 8, generator=g_)
    gamma, beta = torch.randn(8, generator=g_), torch.randn(8, generator=g_)
    ss = torch.randn(2, 16, generator=g_)
    fw, fb = torch.randn(4, 8, 1, 1, generator=g_), torch.randn(4, generator=g_)
    _, wqkv, wout, bout = la_inputs((2, 4, 4, 8, 8), seed=25)
    args = (x, g, ffw, gamma, beta, ss, fw, fb)
    torch._dynamo.reset()
    compiled = torch.compile(level, fullgraph=True, backend=os.environ.get("DSD_TEST_COMPILE_BACKEND", "aot_eager"))
    assert_close(compiled(*args), level(*args), 1e-6, 1e-6, "compiled vs eager")


def _grad_cases():
    """(name, wrapper, twin, float32 inputs) for every op."""
    x, w = ff_inputs((1, 2, 8, 8), seed=24)
    g = gen(25)
    gn = (torch.randn(2, 8, 6, 6, generator=g), torch.randn(8, generator=g),
          torch.randn(8, generator=g))
    gc = (torch.randn(2, 6, 5, 5, generator=g), torch.randn(4, 6, 1, 1, generator=g),
          torch.randn(4, generator=g), torch.randn(2, 4, 5, 5, generator=g))
    return [("ff_parser", ops.ff_parser, ref.ff_parser_ref, (x, w)),
            ("group_norm_silu", lambda a, b, c: ops.group_norm_silu(a, b, c, 4, 1e-5),
             lambda a, b, c: ref.group_norm_silu_ref(a, b, c, 4, 1e-5), gn),
            ("gated_conv1x1", ops.gated_conv1x1, ref.gated_conv1x1_ref, gc),
            ("linear_attention", ops.linear_attention, ref.linear_attention_ref,
             la_inputs((2, 8, 8, 5, 5), seed=26))]


@needs_ext
@pytest.mark.parametrize("case", range(4), ids=["ff_parser", "group_norm_silu",
                                                "gated_conv1x1", "linear_attention"])
def test_wrappers_give_the_twins_gradients_under_autograd(case):
    # The C++ kernels have no backward: with grad recording, the wrappers must route to the
    # twins so that training gets the right gradients. Every input's gradient, under a
    # non-uniform upstream gradient, must equal the twin's (same formula, same order: equal).
    name, op, twin, inputs = _grad_cases()[case]
    upstream = None
    grads = []
    for fn in (op, twin):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        y = fn(*leaves)
        assert y.grad_fn is not None, f"{name}: no autograd graph"
        if upstream is None:
            upstream = torch.randn(y.shape, generator=gen(27))
        y.backward(upstream)
        grads.append([t.grad for t in leaves])
    for i, (got, want) in enumerate(zip(*grads)):
        assert got is not None and want.abs().max() > 0, f"{name}: input {i} has no gradient"
        assert torch.equal(got, want), f"{name}: input {i} gradient differs from the twin's"
    with torch.no_grad():
        assert op(*inputs).grad_fn is None


# --------------------------------------------------------------------------------------
# Fallback path (subprocesses: the extension is loaded once per process)

_FALLBACK_SCRIPT = r"""
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import torch
    {setup}
    from dsd_fast import ops
    from dsd_fast.ops import reference as ref
ours = [w for w in caught if "dsd_fast" in str(w.message)]
assert not ops.AVAILABLE
assert len(ours) == {n_warnings}, [str(w.message) for w in ours]
{check_message}
torch.manual_seed(0)
x = torch.randn(2, 3, 8, 8); w = torch.randn(3, 8, 5, 2)
assert torch.equal(ops.ff_parser(x, w), ref.ff_parser_ref(x, w))
buf = torch.zeros(2, 5, 8, 8); ops.ff_parser(x, w, out=buf[:, 1:4])
assert torch.equal(buf[:, 1:4], ref.ff_parser_ref(x, w)) and not buf[:, 0].any()
g, b = torch.randn(3), torch.randn(3)
assert torch.equal(ops.group_norm_silu(x, g, b, 3, 1e-5), ref.group_norm_silu_ref(x, g, b, 3, 1e-5))
cw, cb = torch.randn(3, 3, 1, 1), torch.randn(3)
assert torch.equal(ops.gated_conv1x1(x, cw, cb, x), ref.gated_conv1x1_ref(x, cw, cb, x))
print("fallback ok")
"""


def _run_fallback(env_extra: dict, setup: str, n_warnings: int, check_message: str) -> None:
    env = {**os.environ, **env_extra}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    script = _FALLBACK_SCRIPT.format(setup=setup, n_warnings=n_warnings,
                                     check_message=check_message)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fallback ok" in proc.stdout


def test_disable_env_forces_reference_fallback():
    # Asked for explicitly: no warning.
    _run_fallback({"DSD_FAST_DISABLE_EXT": "1"}, setup="pass", n_warnings=0, check_message="")


def test_missing_extension_warns_once_with_build_command():
    # Simulate an unbuilt extension: a None entry in sys.modules makes the import fail.
    _run_fallback({"DSD_FAST_DISABLE_EXT": "0"},
                  setup="import sys; sys.modules.update(dict.fromkeys("
                        "['dsd_fast._C_portable', 'dsd_fast._C_avx2', 'dsd_fast._C_avx512']))",
                  n_warnings=1,
                  check_message="assert 'pip install --no-build-isolation -e .' in "
                                "str(ours[0].message)")
