"""The reference network: published key set, shapes, and the FF-Parser variant."""
import pytest
import torch

from dsd_fast import DermoSegDiff, ModelConfig, get_config
from dsd_fast.families.shared.layers import SpaceToDepth
from dsd_fast.families.dermosegdiff.layers import FFParser, standardize_weight

from conftest import make_model

# (key, shape) pairs quoted in ../shared/docs/dermosegdiff.md section 7, plus others
# derived from section 4 for the isic2018 config:
#   dims_x = [128, 128, 256, 384, 512, 640, 768], dims_g = [64, 64, 128, 256, 512, 1024, 2048]
PUBLISHED_SAMPLE = {
    "encoder_blocks.0.0.rb_x1.rb.mlp.1.weight": (256, 512),
    "bottleneck.rb_before.rb.block1.proj.weight": (768, 2816, 3, 3),
    "final_conv.weight": (1, 128, 1, 1),
    "time_mlp_x.1.weight": (512, 128),
    "time_mlp_g.3.weight": (256, 256),
    "init_conv_g.weight": (64, 3, 1, 1),
    "encoder_blocks.0.0.g_feedback.weight": (128, 64, 1, 1),
    "encoder_blocks.0.0.rb_g2.rb.res_conv.weight": (64, 192, 1, 1),
    "encoder_blocks.0.0.att_g.att.fn.fn.to_qkv.weight": (384, 192, 1, 1),
    "encoder_blocks.0.0.att_x.att.fn.fn.to_out.1.weight": (128,),
    "encoder_blocks.0.0.att_x.att.fn.norm.weight": (128,),
    "encoder_blocks.0.1.1.weight": (64, 768, 1, 1),       # g_down: 4*(128+64) -> 64
    "encoder_blocks.0.2.1.weight": (128, 512, 1, 1),      # x_down: 4*128 -> 128
    "encoder_blocks.5.1.weight": (2048, 1664, 3, 3),      # last level: plain 3x3 convs
    "encoder_blocks.5.2.weight": (768, 640, 3, 3),
    "bottleneck.ls_attn.s_attn.fn.fn.to_qkv.weight": (384, 768, 1, 1),
    "bottleneck.ls_attn.s_attn.fn.fn.to_out.weight": (768, 128, 1, 1),
    "bottleneck.ls_attn.l_attn.att.fn.fn.to_out.0.weight": (768, 128, 1, 1),
    "bottleneck.rb_after.rb.block2.norm.weight": (768,),
    "decoder_blocks.0.0.rb_d1.rb.block1.proj.weight": (768, 2432, 3, 3),  # 1024+640+768
    "decoder_blocks.0.1.1.weight": (640, 768, 3, 3),      # Upsample's conv
    "decoder_blocks.5.1.weight": (128, 128, 3, 3),        # last step: plain conv
    "final_rb.rb.block1.proj.weight": (128, 320, 3, 3),
    "final_rb.rb.res_conv.weight": (128, 320, 1, 1),
}


def meta_state_dict(cfg):
    with torch.device("meta"):
        return DermoSegDiff(cfg).state_dict()


def test_published_isic2018_key_set():
    sd = meta_state_dict(get_config("isic2018"))
    assert len(sd) == 632
    for key, shape in PUBLISHED_SAMPLE.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, (key, tuple(sd[key].shape), shape)
    n_params = sum(v.numel() for v in sd.values())
    assert abs(n_params / 1e6 - 321.2) < 0.05          # paper table: 321.2 M
    # No res_conv where the channel count does not change.
    assert "encoder_blocks.0.0.rb_x1.rb.res_conv.weight" not in sd


def test_published_ham10000_size():
    sd = meta_state_dict(get_config("ham10000"))
    assert len(sd) == 632
    assert abs(sum(v.numel() for v in sd.values()) / 1e6 - 157.7) < 0.05


def test_bottleneck_uses_four_groups_and_head_one_group():
    m = DermoSegDiff(get_config("tiny"))
    assert m.bottleneck.rb_before.rb.block1.norm.num_groups == 4
    assert m.final_rb.rb.block1.norm.num_groups == 1
    assert m.encoder_blocks[0][0].rb_x1.rb.block1.norm.num_groups == get_config("tiny").resnet_block_groups


def test_ff_parser_variant_adds_one_key_per_level():
    plain = meta_state_dict(get_config("tiny"))
    ff = meta_state_dict(get_config("tiny_ff"))
    extra = sorted(set(ff) - set(plain))
    cfg = get_config("tiny_ff")
    assert extra == [f"encoder_blocks.{i}.0.ff_parser.weight" for i in range(cfg.levels)]
    for i in range(cfg.levels):
        s = cfg.level_size(i)
        assert tuple(ff[extra[i]].shape) == (cfg.dims_x[i], s, s // 2 + 1, 2)
    assert set(plain) <= set(ff)


def test_ff_parser_identity_init_equals_plain_model():
    """A fresh FF-Parser model computes what the published model computes. Bitwise equality
    is impossible through an rfft2/irfft2 round trip (float32 rounding, ~1e-7 relative per
    plane), so the bound is 1e-5 of the output scale."""
    plain = make_model("tiny", perturb=0.05)
    ff = DermoSegDiff(get_config("tiny_ff")).eval()
    missing = ff.load_state_dict(plain.state_dict(), strict=False)
    assert all("ff_parser" in k for k in missing.missing_keys) and not missing.unexpected_keys
    torch.manual_seed(1)
    x, g, t = torch.randn(3, 1, 16, 16), torch.rand(3, 3, 16, 16), torch.tensor([0, 100, 249])
    with torch.no_grad():
        a, b = plain(x, g, t), ff(x, g, t)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_ff_parser_layer_matches_direct_formula():
    torch.manual_seed(0)
    layer = FFParser(3, 8)
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.randn(2, 3, 8, 8)
    spec = torch.fft.rfft2(x, norm="ortho") * torch.complex(layer.weight[..., 0], layer.weight[..., 1])
    expected = torch.fft.irfft2(spec, s=(8, 8), norm="ortho")
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="built for 8x8"):
        layer(torch.randn(1, 3, 16, 16))


def test_space_to_depth_channel_order():
    # new channel = c*4 + row_offset*2 + col_offset (einops "b c (h p1) (w p2) -> b (c p1 p2) h w")
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    y = SpaceToDepth()(x)
    assert y.shape == (1, 8, 2, 2)
    for c in range(2):
        for p1 in range(2):
            for p2 in range(2):
                torch.testing.assert_close(y[0, c * 4 + p1 * 2 + p2], x[0, c, p1::2, p2::2])


def test_weight_standardisation_formula():
    w = torch.randn(5, 3, 3, 3)
    ws = standardize_weight(w, 1e-5)
    flat = ws.reshape(5, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(5), atol=1e-6, rtol=0)
    var = w.reshape(5, -1).var(1, unbiased=False)
    torch.testing.assert_close(flat.var(1, unbiased=False), var / (var + 1e-5), atol=1e-6, rtol=1e-6)


def test_forward_shapes_and_config_validation():
    m = make_model("tiny")
    out = m(torch.randn(2, 1, 16, 16), torch.rand(2, 3, 16, 16), torch.tensor([3, 7]))
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(8, 8, (1, 2, 2), (1, 2, 2), 4, image_size=18)
    with pytest.raises(ValueError, match="same length"):
        ModelConfig(8, 8, (1, 2), (1, 2, 2), 4)


def test_config_round_trips_through_json():
    cfg = get_config("default")
    assert ModelConfig.from_dict(__import__("json").loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
