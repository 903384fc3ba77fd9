"""Winograd F(4x4, 3x3) convolution (csrc/winograd_conv3x3.cpp, ops/winograd.py) against the
direct convolution computed in float64, its PyTorch twin, and in the fast models' layers.

Tolerance: |y - conv_f64| <= 2e-5 * max|conv_f64| elementwise. Why that number: float32
direct convolution is ~1e-6 of scale off the float64 one at these sizes; Winograd F(4x4, 3x3)
with the points 0, 1, -1, 1/2, -2 measured 0.2-3.5e-6 (up to 128 channels); its transforms
carry entries up to 8, so its error is a few times the direct one's. A wrong transform entry,
tile offset or edge mask gives errors of the order of the output itself.
test_isa_builds.py runs this file under every build of the kernels this CPU can run.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsd_fast import ops
from dsd_fast.families.shared.fast_blocks import FusedBlock
from dsd_fast.families.shared.winograd import WinogradConv2d, enable_winograd, winograd_mode
from dsd_fast.ops import winograd

needs_ext = pytest.mark.skipif(not ops.WINOGRAD, reason="dsd_fast._C_<isa> is not built "
                               "(or was built before the Winograd op)")
ATOL_REL = 2e-5
CL = torch.channels_last


def inputs(shape, seed=0, layout=CL):
    b, c, h, w, k = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen).contiguous(memory_format=layout)
    wt = torch.randn(k, c, 3, 3, generator=gen) / (9 * c) ** 0.5
    bias = torch.randn(k, generator=gen)
    return x, wt, bias


def check(y, x, wt, bias, what):
    expected = F.conv2d(x.double(), wt.double(), bias.double(), padding=1)
    assert y.shape == expected.shape and y.dtype == torch.float32, what
    err = (y.double() - expected).abs().max().item() / expected.abs().max().item()
    assert err <= ATOL_REL, f"{what}: max error {err:.3g} of scale > {ATOL_REL}"


# (B, C, H, W, K): 4 x 4-divisible and ragged sizes (partial edge tiles), 1 x 1 and thin
# images, K not a multiple of the 32-channel weight panel (48, 16), many tiles per block
# and fewer tiles than one micro-tile, and the isic2018 network's channel counts (smaller).
SHAPES = [(1, 16, 4, 4, 16), (2, 32, 9, 13, 48), (1, 64, 16, 16, 64), (1, 16, 1, 1, 32),
          (1, 32, 3, 5, 16), (3, 16, 7, 2, 80), (1, 128, 32, 32, 128), (2, 48, 20, 20, 32),
          (1, 320, 8, 8, 128), (1, 16, 64, 64, 16)]


@needs_ext
@pytest.mark.parametrize("shape", SHAPES)
def test_op_matches_direct_convolution(shape):
    x, wt, bias = inputs(shape)
    y = ops.winograd_conv3x3(x, winograd.winograd_weight(wt), bias)
    check(y, x, wt, bias, f"op at {shape}")
    assert y.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("shape", SHAPES[:6])
def test_twin_matches_direct_convolution(shape):
    x, wt, bias = inputs(shape, seed=1)
    check(winograd.winograd_conv3x3_ref(x, winograd.winograd_weight(wt), bias), x, wt, bias,
          f"twin at {shape}")


@needs_ext
def test_op_agrees_with_its_twin_and_takes_nchw_input():
    x, wt, bias = inputs((2, 32, 11, 6, 48), seed=2)
    u = winograd.winograd_weight(wt)
    y = ops.winograd_conv3x3(x, u, bias)
    twin = winograd.winograd_conv3x3_ref(x, u, bias)
    scale = twin.abs().max()
    assert (y - twin).abs().max() <= 1e-5 * scale
    y_nchw = ops.winograd_conv3x3(x.contiguous(), u, bias)        # copied to NHWC inside
    assert torch.equal(y_nchw, y)


def test_weight_packing_layout():
    wt = torch.randn(40, 16, 3, 3, dtype=torch.float64)
    u = winograd.winograd_weight(wt)
    assert u.shape == (2, 36, 16, 32) and u.dtype == torch.float32 and u.is_contiguous()
    assert torch.all(u[1, :, :, 8:] == 0)                         # K 40: panel 2 padded
    # position (i, j) of output channel k, input channel c: (G w G^T)[i, j]
    full = torch.einsum("ia,kcab,jb->kcij", winograd.G, wt, winograd.G)
    assert torch.allclose(u[1, 2 * 6 + 3, 5, 7].double(), full[39, 5, 2, 3], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(K, C, 3, 3\)"):
        winograd.winograd_weight(torch.randn(8, 8, 5, 5))


def test_transform_matrices_reconstruct_correlation():
    # y_i = sum_k g_k d_{i+k} for every 1-D input: A^T [(G g) . (B^T d)] == correlation
    g, d = torch.randn(3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    y = winograd.AT @ ((winograd.G @ g) * (winograd.BT @ d))
    assert torch.allclose(y, torch.stack([d[i:i + 3] @ g for i in range(4)]), atol=1e-12)


@needs_ext
def test_op_rejects_bad_arguments():
    x, wt, bias = inputs((1, 16, 8, 8, 16))
    u = winograd.winograd_weight(wt)
    with pytest.raises(RuntimeError, match="multiples of 16"):
        torch.ops.dsd_fast.winograd_conv3x3(torch.randn(1, 8, 8, 8), u, bias)
    with pytest.raises(RuntimeError, match=r"u must be \(1, 36, 16, 32\)"):
        torch.ops.dsd_fast.winograd_conv3x3(x, u[:, :35], bias)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.dsd_fast.winograd_conv3x3(x.double(), u, bias)


@needs_ext
def test_opcheck():
    x, wt, bias = inputs((1, 16, 6, 5, 32))
    torch.library.opcheck(torch.ops.dsd_fast.winograd_conv3x3.default,
                          (x, winograd.winograd_weight(wt), bias),
                          test_utils=("test_schema", "test_faketensor"))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.block = FusedBlock(torch.randn(32, 16, 3, 3, generator=gen) / 12,
                                torch.randn(32, generator=gen), nn.GroupNorm(8, 32))
        self.conv = nn.Conv2d(32, 48, 3, padding=1)
        self.conv_nobias = nn.Conv2d(48, 16, 3, padding=1, bias=False)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)               # 3 channels: stays direct
        self.strided = nn.Conv2d(16, 16, 3, stride=2, padding=1)  # stride 2: stays direct

    def forward(self, x):
        return self.strided(self.conv_nobias(self.conv(self.block(x))))


@needs_ext
def test_enable_winograd_converts_eligible_layers_only():
    net = Net().eval()
    x = torch.randn(2, 16, 12, 12).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = net(x)
        keys = set(net.state_dict())
        assert enable_winograd(net) == 3
        assert type(net.conv) is WinogradConv2d and type(net.conv_nobias) is WinogradConv2d
        assert type(net.stem) is nn.Conv2d and type(net.strided) is nn.Conv2d
        assert set(net.state_dict()) == keys                      # u is not a checkpoint key
        got = net(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert not torch.equal(got, expected)                         # it did run another path


def test_winograd_mode_follows_dtype_autocast_and_autograd():
    x = torch.randn(1, 16, 4, 4)
    assert winograd_mode(x) == "fp32"
    assert winograd_mode(x.double()) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert winograd_mode(x) == ("bf16" if ops.WINOGRAD_BF16 else None)
    with torch.autocast("cpu", dtype=torch.float16):
        assert winograd_mode(x) is None
    assert winograd_mode(x.requires_grad_()) is None


# --------------------------------------------------------------------------------------
# bfloat16 products (precision="bf16"): AVX-512 build on CPUs with AVX512_BF16

needs_bf16 = pytest.mark.skipif(not ops.WINOGRAD_BF16,
                                reason="needs the AVX-512 build on a CPU with AVX512_BF16")
BF16_SHAPES = [(1, 16, 4, 4, 16), (2, 32, 9, 13, 48), (1, 64, 16, 16, 64), (3, 16, 7, 2, 80),
               (1, 320, 8, 8, 128)]


def test_bf16_weight_packing_pairs_input_channels():
    wt = torch.randn(40, 32, 3, 3)
    u16 = winograd.winograd_weight_bf16(wt)
    assert u16.shape == (2, 36, 16, 32, 2) and u16.dtype == torch.bfloat16
    u = winograd.winograd_weight(wt)
    # pair (c = 2 q, 2 q + 1) of output column n, position xi: u[p, xi, 2 q + e, n]
    assert u16[1, 7, 5, 3, 1] == u[1, 7, 11, 3].to(torch.bfloat16)
    assert torch.equal(winograd.unpack_bf16(u16), u.to(torch.bfloat16).float())


@needs_bf16
@pytest.mark.parametrize("shape", BF16_SHAPES)
def test_bf16_op_matches_its_twin_and_the_convolution(shape):
    """Against the twin doing the same roundings (V and U to bfloat16, float32 sums): 1e-3
    of scale (only summation order and, rarely, a V value rounding the other way differ).
    Against the float64 convolution: 3e-2 of scale, bfloat16's level (8 significant bits;
    the direct bf16 convolution's network-level error was 1.2e-2, docs/PERFORMANCE.md)."""
    x, wt, bias = inputs(shape, seed=4)
    u16 = winograd.winograd_weight_bf16(wt)
    y = ops.winograd_conv3x3_bf16(x, u16, bias)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    twin = winograd.winograd_conv3x3_ref(x, u16, bias, round_v_bf16=True)
    scale = twin.abs().max()
    assert (y - twin).abs().max() <= 1e-3 * scale
    exact = F.conv2d(x.double(), wt.double(), bias.double(), padding=1)
    err = ((y.double() - exact).abs().max() / exact.abs().max()).item()
    assert 1e-5 < err <= 3e-2, err                     # bf16-sized: neither exact nor off


@needs_ext
def test_bf16_op_is_refused_outside_the_avx512_build():
    if ops.ISA == "avx512":
        pytest.skip("this process runs the AVX-512 build")
    x, wt, bias = inputs((1, 16, 4, 4, 16))
    with pytest.raises(RuntimeError, match="AVX-512 build"):
        torch.ops.dsd_fast.winograd_conv3x3_bf16(x, winograd.winograd_weight_bf16(wt), bias)


@needs_ext
def test_enable_winograd_under_bf16_autocast():
    net = Net().eval()
    x = torch.randn(2, 16, 12, 12).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = net(x)
        enable_winograd(net)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(x).float()
    assert (got - expected).abs().max() <= 5e-2 * expected.abs().max()
    assert (net.conv.wino.u16 is not None) == ops.WINOGRAD_BF16   # made on first bf16 use
