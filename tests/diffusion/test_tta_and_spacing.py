"""Test-time augmentation across ensemble members (diffusion/tta.py) and DDIM's trailing
time grid (ddim.trailing_timesteps), through sample_ensemble and segment()."""
import numpy as np
import pytest
import torch

from dsd_fast import segment
from dsd_fast.diffusion import Schedule, ddim_timesteps, sample_ensemble, trailing_timesteps
from dsd_fast.diffusion.tta import SYMMETRIES, member_views, undo_member_views


def test_views_are_the_eight_symmetries_and_undo_inverts_them():
    x = torch.rand(2, 3, 7, 7)
    v = member_views(x, 10).view(2, 10, 3, 7, 7)
    # eight different views of an asymmetric image; member 8 repeats member 0
    flat = v[0, :SYMMETRIES].reshape(SYMMETRIES, -1)
    assert len({tuple(r.tolist()) for r in flat}) == SYMMETRIES
    assert torch.equal(v[:, 8], x) and torch.equal(v[:, 9], x.flip(-1))
    # each view is a symmetry: the same multiset of pixels
    for e in range(SYMMETRIES):
        assert torch.equal(v[0, e].flatten().sort().values, x[0].flatten().sort().values)
    back = undo_member_views(member_views(x, 10), 10)
    assert torch.equal(back, x.repeat_interleave(10, dim=0))


def _target_network(schedule):
    """An eps predictor whose clean-mask estimate is the image's first channel, mapped to
    [-1, 1], wherever it stands: what a perfect segmenter of 'bright = lesion' would do."""
    ac = schedule.alphas_cumprod.float()

    def eps(x_t, image, t):
        a = ac[t].view(-1, 1, 1, 1)
        x0 = image[:, :1] * 2 - 1
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    return eps


def test_tta_members_come_back_aligned_with_the_image():
    sched = Schedule.published()
    image = torch.zeros(1, 3, 16, 16)
    image[:, :, 2:7, 3:12] = 1.0                       # an off-centre, asymmetric block
    target = image[0, 0] * 2 - 1
    out = sample_ensemble(_target_network(sched), sched, image, 5, 8, seed=0, tta=True)
    for e in range(8):
        assert torch.allclose(out[0, e], target, atol=1e-4), e
    # without undoing, the rotated members would not line up: check the views differ
    views = member_views(image, 8)[:, 0]
    assert not all(torch.equal(views[e], image[0, 0]) for e in range(8))


def test_trailing_grid_starts_at_t_max():
    assert trailing_timesteps(250, 1).tolist() == [249]
    assert trailing_timesteps(250, 3).tolist() == [249, 166, 82]
    ts = trailing_timesteps(250, 25)
    assert ts[0] == 249 and ts[-1] == 9 and (ts[:-1] > ts[1:]).all()
    assert torch.equal(trailing_timesteps(250, 250), torch.arange(249, -1, -1))
    assert ddim_timesteps(250, 3).tolist() == [166, 83, 0]     # "leading", for contrast
    with pytest.raises(ValueError):
        trailing_timesteps(250, 0)


def test_sampler_walks_the_chosen_grid():
    sched = Schedule.published()
    seen = {}
    for spacing in ("leading", "trailing"):
        ts = []

        def eps(x_t, image, t, ts=ts):
            ts.append(int(t[0]))
            return torch.zeros_like(x_t)
        sample_ensemble(eps, sched, torch.rand(1, 3, 8, 8), 3, 2, seed=0, spacing=spacing)
        seen[spacing] = ts
    assert seen["leading"] == [166, 83, 0] and seen["trailing"] == [249, 166, 82]
    with pytest.raises(ValueError, match="spacing"):
        sample_ensemble(eps, sched, torch.rand(1, 3, 8, 8), 3, 2, seed=0, spacing="middle")
    with pytest.raises(ValueError, match="DDIM"):
        sample_ensemble(eps, sched, torch.rand(1, 3, 8, 8), 3, 2, seed=0, sampler="dpmpp",
                        spacing="trailing")


def test_segment_accepts_tta_and_spacing_and_refuses_bad_values(tiny_model):
    img = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    plain = segment(img, steps=2, ensemble=3, model=tiny_model)[0]
    tta = segment(img, steps=2, ensemble=3, model=tiny_model, tta=True)[0]
    trailing = segment(img, steps=2, ensemble=3, model=tiny_model, spacing="trailing")[0]
    assert plain.mask.shape == tta.mask.shape == trailing.mask.shape == (20, 24)
    # same noise, other views / other grid: the probability maps change
    assert not np.array_equal(plain.probability, tta.probability)
    assert not np.array_equal(plain.probability, trailing.probability)
    with pytest.raises(ValueError, match="spacing"):
        segment(img, steps=2, model=tiny_model, spacing="uniform")
    with pytest.raises(ValueError, match="spacing"):
        segment(img, steps=2, model=tiny_model, spacing="trailing", sampler="ddpm")
    with pytest.raises(ValueError, match="tta"):
        segment(img, steps=2, model=tiny_model, tta="yes")
