"""The fast official MedSegDiff network against its reference (1e-4 of scale), and masks
end to end (Dice >= 0.999 against the reference backend)."""
from pathlib import Path

import pytest
import torch
from deterministic_weights import deterministic_weights

import dsd_fast
from dsd_fast import ops
from dsd_fast.families.medsegdiff_official import (OFFICIAL_CONFIGS, OfficialDenoiser,
                                                   build_official_medsegdiff)
from dsd_fast.families.medsegdiff_official.fast import build_fast_model
from dsd_fast.metrics import dice

pytestmark = pytest.mark.skipif(not ops.fast_path_available(torch.device("cpu")),
                                reason="the C++ ops are not built (DSD_FAST_NO_EXT=1?)")


V1_GOLDEN = Path(__file__).parent.parent / "data" / "msd_official_golden_v1.safetensors"


def net_for(name, **changes):
    net = build_official_medsegdiff(OFFICIAL_CONFIGS[name].replace(**changes)).eval()
    net.load_state_dict(deterministic_weights({k: v.shape for k, v in net.state_dict().items()}))
    return net


@pytest.mark.parametrize("name", ["msd_official_tiny", "msd_official_tiny_ss"])
def test_fast_forward_matches_the_reference(name):
    net = net_for(name)
    fast = build_fast_model(net)
    s = net.config.image_size
    g = torch.Generator().manual_seed(0)
    x_t, image = torch.randn(3, 1, s, s, generator=g), torch.rand(3, 3, s, s, generator=g)
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        ref_out, ref_cal = net(x_t, image, t)
        out, cal = fast(x_t, image, t)
    for a, b in ((out, ref_out), (cal, ref_cal)):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    # the reference is untouched (its BatchNorms are still there)
    assert isinstance(net.hwm.conv_blocks_context[0].blocks[0].instnorm, torch.nn.BatchNorm2d)


def test_fast_v2_runs_channels_last_throughout():
    """The layout is why V2's fast forward is faster (fast.py): every 3x3 convolution must
    see channels_last input, none a copy back to NCHW made on the way. (64 px: at 32 px the
    anchor network's bottleneck is 1 x 1, where the two layouts are the same memory and
    torch.cat may report either. The first convolution is left out: its input is the cat of
    the image and the 1-channel x_t, which torch.cat returns NCHW; 4 channels, no cost.)"""
    fast = build_fast_model(net_for("msd_official_tiny_ss"))
    seen = []
    hooks = [m.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        for m in fast.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels > 4]
    s = fast.config.image_size
    with torch.no_grad():
        out, cal = fast(torch.randn(2, 1, s, s), torch.rand(2, 3, s, s), torch.tensor([5, 9]))
    for h in hooks:
        h.remove()
    assert len(seen) > 10 and all(seen)
    assert out.is_contiguous() and cal.is_contiguous()


def test_fast_masks_agree_with_the_reference_end_to_end():
    net = net_for("msd_official_tiny", timesteps=50)
    pipe = dsd_fast.pipeline_from_network(net)
    # 2 images x 2 members (4 chains of 10 steps per sampler and backend): the V2 network
    # is 128-256 channels wide even at 32 px, so each chain costs
    images = [torch.rand(3, 48, 40, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for sampler in ("ddim", "dpmpp"):
        ref = pipe.segment(images, steps=10, ensemble=2, sampler=sampler, backend="reference")
        fast = pipe.segment(images, steps=10, ensemble=2, sampler=sampler, backend="fast")
        for r, f in zip(ref, fast):
            if r.mask.any() or f.mask.any():
                assert dice(f.mask, r.mask) >= 0.999
            assert abs(f.probability - r.probability).max() < 1e-3


def test_pipeline_samples_through_the_denoiser_adapter():
    net = net_for("msd_official_tiny")
    pipe = dsd_fast.pipeline_from_network(net)
    assert isinstance(pipe.eps_model("fast"), OfficialDenoiser)
    assert getattr(pipe.eps_model("fast").net, "is_fast", False)


def test_fast_v1_with_fused_ff_parsers_matches_the_reference():
    """Against the official code's own V1 output (tests/data/msd_official_golden_v1, which
    the reference matches within 1e-5 of scale: test_medsegdiff_official.py) rather than a
    reference forward here: at 256 px each V1 forward is seconds on one core. The projection
    seeded with 123 is the published forward right after torch.manual_seed(123)."""
    from safetensors.torch import load_file
    seeded = build_official_medsegdiff(OFFICIAL_CONFIGS["msd_official_isic_v1"],
                                       v1_projection_seed=123).eval()
    seeded.load_state_dict(deterministic_weights(
        {k: v.shape for k, v in seeded.state_dict().items()}))
    golden = load_file(str(V1_GOLDEN))
    ref_out, ref_cal = golden["v1.out"], golden["v1.cal"]
    fast = build_fast_model(seeded)
    from dsd_fast.families.medsegdiff_official.fast import FastFFParser
    assert sum(isinstance(m, FastFFParser) for m in fast.modules()) == 4
    g = torch.Generator().manual_seed(2)                    # the golden file's inputs
    x_t, image = torch.randn(1, 1, 256, 256, generator=g), torch.rand(1, 3, 256, 256, generator=g)
    with torch.no_grad():
        out, cal = fast(x_t, image, torch.tensor([500]))
    assert (out - ref_out).abs().max() <= 1e-4 * ref_out.abs().max()
    assert (cal - ref_cal).abs().max() <= 1e-4
    with torch.no_grad():
        eps = OfficialDenoiser(fast)(x_t, image, torch.tensor([500]))  # V1: the full forward
    assert (eps - out[:, :1]).abs().max() <= 1e-5 * out.abs().max()
