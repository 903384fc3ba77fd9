"""The fast model against the reference model (the oracle)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsd_fast import DermoSegDiff, get_config, ops, segment
from dsd_fast.families.dermosegdiff import DERMOSEGDIFF
from dsd_fast.families.dermosegdiff.fast import build_fast_model
from dsd_fast.metrics import dice

from conftest import make_model, perturb_weights


def _inputs(b, s, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 1, s, s, generator=gen), torch.rand(b, 3, s, s, generator=gen),
            torch.randint(0, 250, (b,), generator=gen))


@pytest.mark.parametrize("channels_last,winograd", [(False, False), (True, False), (True, True)],
                         ids=["nchw", "nhwc", "nhwc-winograd"])
@pytest.mark.parametrize("name", ["tiny", "tiny_ff", "default"])
def test_fast_denoiser_matches_reference(name, channels_last, winograd):
    """max |eps_fast - eps_ref| <= 1e-4 x max |eps_ref| (float32: folding the weight
    standardisation and fusing GroupNorm reorder roundings, ~1e-6 observed), in both
    layouts (channels_last is the CPU default; NCHW elsewhere), and with the 3x3
    convolutions by Winograd (the CPU default when the op is built; ~1e-5 of scale per
    layer, tests/ops/test_winograd.py)."""
    if winograd and not ops.WINOGRAD:
        pytest.skip("the C++ extension (with its Winograd op) is not built")
    ref = make_model(name)
    fast = build_fast_model(ref, channels_last=channels_last, winograd=winograd)
    if winograd and name == "default":           # 16 wide: its blocks qualify (tiny: 8 wide)
        assert sum(m.wino is not None for m in fast.modules()
                   if type(m).__name__ == "FusedBlock") > 20
    s = get_config(name).image_size
    x, g, t = _inputs(5, s)
    with torch.no_grad():
        a, b = ref(x, g, t), fast(x, g, t)
        b_again = fast(*_inputs(5, s))      # reused static buffers must not leak state
        b_again = fast(x, g, t)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    assert torch.equal(b, b_again)
    one = fast(x[:1], g[:1], t[:1])         # another batch size: buffers re-made
    assert (one - a[:1]).abs().max() <= 1e-4 * a.abs().max()


def test_fast_model_runs_channels_last_throughout_on_the_cpu():
    """The layout is why the CPU default is NHWC (fast.py): every 3x3 convolution and every
    linear attention must see channels_last input (no copy back to NCHW on the way), and eps
    comes back contiguous as the reference returns it. (The FF-Parser gets an NCHW copy by
    design: it filters whole planes.)"""
    fast = build_fast_model(make_model("tiny_ff"))
    assert type(fast).__name__ == "ChannelsLastDermoSegDiff"
    seen = []

    def record(m, args):
        x = args[0]
        seen.append((type(m).__name__, x.is_contiguous(memory_format=torch.channels_last)
                     and not x.is_contiguous()))
    from dsd_fast.families.shared.fast_attention import LinearAttentionCore
    hooks = [m.register_forward_pre_hook(record) for m in fast.modules()
             if (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels > 3)
             or isinstance(m, LinearAttentionCore)
             or type(m).__name__ == "FusedBlock"]
    x, g, t = _inputs(2, 16)
    with torch.no_grad():
        out = fast(x, g, t)
    for h in hooks:
        h.remove()
    assert len(seen) > 40 and {n for n, _ in seen} >= {"FusedBlock", "LinearAttentionCore"}
    assert all(ok for _, ok in seen), [n for n, ok in seen if not ok]
    assert out.is_contiguous()


@pytest.mark.parametrize("shape", [(5, 16, 16, 16), (2, 7, 5, 9), (1, 64, 8, 8)])
def test_reassociated_linear_attention_matches_published_block(shape):
    """FastLAtt's PyTorch order (GPU tensors, or no C++ extension) against layers.LAtt."""
    from dsd_fast.families.dermosegdiff.fast_attention import FastLAtt
    from dsd_fast.families.dermosegdiff.layers import LAtt
    torch.manual_seed(3)
    latt = perturb_weights(LAtt(shape[1]), 0.1)
    with torch.no_grad():
        x = torch.randn(*shape)
        ref = latt(x)
        fast = FastLAtt(latt)
        got = fast._reassociated(F.group_norm(x, 1, fast.pre_gamma, fast.pre_beta, fast.pre_eps)
                                 .reshape(shape[0], shape[1], -1))
        got = F.group_norm(got.reshape(shape), 1, fast.out_gamma, fast.out_beta, fast.out_eps) + x
        via_forward = fast(x)
    # reassociation only reorders float32 roundings (~1e-6 of scale observed)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert (via_forward - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_fast_model_folds_weights_and_leaves_reference_alone():
    ref = make_model("tiny_ff")
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    fast = build_fast_model(ref)
    keys = fast.state_dict().keys()
    assert not any(k.endswith("proj.weight") for k in keys)          # raw WS weights gone
    assert any(k.endswith("block1.weight") for k in keys)            # folded ones kept
    for k, v in ref.state_dict().items():
        assert torch.equal(v, before[k])
    w = ref.encoder_blocks[0][0].rb_x1.rb.block1.proj.weight
    folded = fast.encoder_blocks[0][0].rb_x1.rb.block1.weight
    flat = folded.reshape(folded.shape[0], -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(w.shape[0]), atol=1e-6, rtol=0)


def test_fast_model_cache_follows_weight_changes():
    ref = make_model("tiny")
    f1 = DERMOSEGDIFF.fast_model_for(ref)
    assert DERMOSEGDIFF.fast_model_for(ref) is f1
    with torch.no_grad():
        ref.final_conv.bias.add_(1.0)
    f2 = DERMOSEGDIFF.fast_model_for(ref)
    assert f2 is not f1
    x, g, t = _inputs(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(f2(x, g, t), ref(x, g, t), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_fast_matches_reference_on_published_isic2018_config():
    torch.manual_seed(0)
    ref = DermoSegDiff(get_config("isic2018")).eval()
    fast = build_fast_model(ref)
    x, g, t = _inputs(1, 128)
    with torch.no_grad():
        a = ref(x, g, t)
        b = fast(x, g, t)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_backends_agree_end_to_end():
    model = make_model("tiny_ff", perturb=0.02)
    # An untrained network's eps is unrelated to x_t and DDIM chains blow up; a small output
    # layer keeps eps small but input-dependent, so the chains stay finite and the masks
    # are mixed (about half foreground).
    with torch.no_grad():
        model.final_conv.weight.mul_(0.05)
    imgs = [torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ref = segment(imgs, steps=10, ensemble=3, model=model, seed=4, backend="reference")
    fast = segment(imgs, steps=10, ensemble=3, model=model, seed=4, backend="fast")
    for r, f in zip(ref, fast):
        assert 0.1 < r.mask.mean() < 0.9
        assert dice(r.mask, f.mask) >= 0.999
        np.testing.assert_allclose(r.probability, f.probability, atol=1e-3)
    with pytest.raises(ValueError, match="backend"):
        segment(imgs[0], steps=1, ensemble=1, model=model, backend="gpu")


@pytest.mark.skipif(not ops.AVAILABLE, reason="the C++ extension is not built")
def test_compile_fullgraph_over_the_fused_ops():
    """torch.compile traces the fast model (fused ops included) without graph breaks."""
    fast = build_fast_model(make_model("tiny_ff"))
    x, g, t = _inputs(2, 16)
    with torch.no_grad():
        expected = fast(x, g, t)
        compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
        got = compiled(x, g, t)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
