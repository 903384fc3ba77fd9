"""The static-buffer DDIM path (captured as a CUDA graph on GPUs) against the eager sampler."""
import pytest
import torch

from dsd_fast.diffusion import DDIMSampler, Schedule, ddim_timesteps
from dsd_fast.diffusion.graph import CACHE_SIZE, StaticDDIM, clear_cache, static_ddim

from conftest import make_model


def _damped(name="tiny_ff"):
    m = make_model(name, perturb=0.02)
    with torch.no_grad():
        m.final_conv.weight.mul_(0.05)       # finite chains for an untrained network
    return m


def plain_clipped_ddim(model, sched, steps, img, x):
    """DDIM with x0 clipping written out step by step in float64 (no tables, no buffers):
    an oracle independent of the sampler code the static path shares."""
    ac = sched.alphas_cumprod
    ts = ddim_timesteps(sched.T, steps).tolist()
    x = x.double()
    for i, t in enumerate(ts):
        eps = model(x.float(), img, torch.full((x.shape[0],), t)).double()
        a_t = ac[t]
        a_n = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_n.sqrt() * x0 + (1 - a_n).sqrt() * eps
    return x.float()


def test_static_path_equals_a_plain_ddim_loop():
    model, sched = _damped(), Schedule.published()
    gen = torch.Generator().manual_seed(0)
    img1, img2 = torch.rand(3, 3, 16, 16, generator=gen), torch.rand(3, 3, 16, 16, generator=gen)
    x1, x2 = torch.randn(3, 1, 16, 16, generator=gen), torch.randn(3, 1, 16, 16, generator=gen)
    static = StaticDDIM(model, sched, 8, 3, 16, torch.float32, torch.device("cpu"))
    assert static.graph is None                                # no capture on CPU
    with torch.no_grad():
        want1, want2 = (plain_clipped_ddim(model, sched, 8, i, x) for i, x in ((img1, x1),
                                                                             (img2, x2)))
        first = static.run(img1, x1)
        # float32 network and update against the float64 update: agreement to 1e-4 of the
        # [-1, 1] mask range; a wrong table entry, step order or clip is an O(0.1) error.
        torch.testing.assert_close(first, want1, rtol=0, atol=1e-4)
        torch.testing.assert_close(static.run(img2, x2), want2, rtol=0, atol=1e-4)
        assert torch.equal(static.run(img1, x1), first)          # buffers reused, reset


def test_cache_keys_and_eviction():
    clear_cache()
    model, sched = _damped("tiny"), Schedule.published()
    img = torch.rand(2, 3, 16, 16)
    a = static_ddim(model, sched, 5, img)
    assert static_ddim(model, sched, 5, img) is a
    assert static_ddim(model, sched, 6, img) is not a                    # new steps
    assert static_ddim(model, sched, 5, torch.rand(4, 3, 16, 16)) is not a  # new batch
    for steps in range(10, 10 + CACHE_SIZE):
        static_ddim(model, sched, steps, img)
    assert static_ddim(model, sched, 5, img) is not a                    # evicted, rebuilt
    clear_cache()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
def test_cuda_graph_replay_matches_eager_on_gpu():
    model = _damped().cuda()
    sched = Schedule.published()
    img = torch.rand(5, 3, 16, 16, device="cuda")
    x = torch.randn(5, 1, 16, 16, device="cuda")
    static = static_ddim(model, sched, 10, img)
    assert static.graph is not None
    with torch.no_grad():
        eager = DDIMSampler(sched, 10).sample(model, img, None, x_init=x)
        got = static.run(img, x)
        again = static.run(img, x)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, again)
