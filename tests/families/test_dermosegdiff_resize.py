"""Moving DermoSegDiff weights to another input size (a warm start at another size): only
the FF-Parser gates depend on it, carried over frequency by frequency in cycles per plane."""
import pytest
import torch

from dsd_fast import DermoSegDiff, get_config
from dsd_fast.families.dermosegdiff import DERMOSEGDIFF
from dsd_fast.families.medsegdiff import MEDSEGDIFF
from dsd_fast.families.dermosegdiff.layers import FFParser, resize_ff_weight

from conftest import make_model


def test_same_size_is_identity_and_up_then_down_returns_the_weight():
    w = torch.randn(3, 8, 5, 2)
    assert torch.equal(resize_ff_weight(w, 8), w)
    for size in (10, 12, 16):
        assert resize_ff_weight(w, size).shape == (3, size, size // 2 + 1, 2)
        assert torch.equal(resize_ff_weight(resize_ff_weight(w, size), 8), w)
    identity = FFParser(2, 8).weight.detach()
    assert torch.equal(resize_ff_weight(identity, 12), FFParser(2, 12).weight.detach())
    with pytest.raises(ValueError, match="not an FFParser weight"):
        resize_ff_weight(torch.randn(3, 8, 8, 2), 12)


@pytest.mark.parametrize("old, new", [(8, 12), (8, 16), (12, 8)])
def test_the_resized_gate_acts_on_the_same_content(old, new):
    # A plane holding only frequencies both grids have (|f| < min/2 in cycles per plane),
    # Fourier-resampled from `old` to `new` pixels: the resized gate on the resampled plane
    # gives the resampled output of the old gate on the old plane.
    torch.manual_seed(0)
    layer_old = FFParser(3, old)
    with torch.no_grad():
        layer_old.weight.normal_()
    layer_new = FFParser(3, new)
    with torch.no_grad():
        layer_new.weight.copy_(resize_ff_weight(layer_old.weight, new))
    low = min(old, new) // 2                                  # keep |f| < low

    def band(spec, size):             # zero every frequency a grid of side 2*low lacks
        f = torch.fft.fftfreq(size, d=1.0 / size).round().abs()
        keep = (f < low)[:, None] & (torch.arange(size // 2 + 1) < low)[None, :]
        return spec * keep

    def resample(plane, size):
        s = plane.shape[-1]
        spec = band(torch.fft.rfft2(plane, norm="ortho"), s)
        out = torch.zeros(*plane.shape[:-2], size, size // 2 + 1, dtype=spec.dtype)
        f_old = torch.fft.fftfreq(s, d=1.0 / s).round().long()
        rows = f_old[f_old.abs() < low]
        out[..., rows % size, :low] = spec[..., rows % s, :low]
        return torch.fft.irfft2(out * (size / s), s=(size, size), norm="ortho")

    x = resample(torch.randn(2, 3, old, old, dtype=torch.float64), old).float()
    got = layer_new(resample(x.double(), new).float())
    want = resample(layer_old(x).double(), new).float()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_family_moves_a_whole_state_dict_and_refuses_what_it_cannot():
    net = make_model("tiny_ff")
    cfg = net.config
    moved = DERMOSEGDIFF.resized_state_dict(net.state_dict(), cfg, 24)
    bigger = DermoSegDiff(cfg.replace(image_size=24))
    bigger.load_state_dict(moved)                              # strict: every key, shape
    before = net.state_dict()
    changed = {k for k in moved if moved[k].shape != before[k].shape
               or not torch.equal(moved[k], before[k])}
    assert changed and all(k.endswith("ff_parser.weight") for k in changed)
    with pytest.raises(ValueError, match="divisible"):
        DERMOSEGDIFF.resized_state_dict(net.state_dict(), cfg, 18)
    with pytest.raises(ValueError, match="cannot be moved"):
        MEDSEGDIFF.resized_state_dict({}, None, 64)
    assert get_config("default_80") == get_config("default").replace(image_size=80)
    assert get_config("default_2class_128") == get_config("default_2class").replace(image_size=128)
