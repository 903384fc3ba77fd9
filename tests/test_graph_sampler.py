"""The static-buffer DDIM path (captured as a CUDA graph on GPUs) against the eager sampler."""
import pytest
import torch

from dsd_fast.diffusion import DDIMSampler, Schedule
from dsd_fast.graph_sampler import CACHE_SIZE, StaticDDIM, clear_cache, static_ddim

from conftest import make_model


def _damped(name="tiny_ff"):
    m = make_model(name, perturb=0.02)
    with torch.no_grad():
        m.final_conv.weight.mul_(0.05)       # finite chains for an untrained network
    return m


def test_static_path_equals_eager_ddim_exactly():
    model, sched = _damped(), Schedule.published()
    gen = torch.Generator().manual_seed(0)
    img1, img2 = torch.rand(3, 3, 16, 16, generator=gen), torch.rand(3, 3, 16, 16, generator=gen)
    x1, x2 = torch.randn(3, 1, 16, 16, generator=gen), torch.randn(3, 1, 16, 16, generator=gen)
    static = StaticDDIM(model, sched, 8, 3, 16, torch.float32, torch.device("cpu"))
    assert static.graph is None                                # no capture on CPU
    eager = lambda img, x: DDIMSampler(sched, 8).sample(model, img, torch.Generator(), x_init=x)
    with torch.no_grad():
        assert torch.equal(static.run(img1, x1), eager(img1, x1))
        assert torch.equal(static.run(img2, x2), eager(img2, x2))   # buffers reused
        assert torch.equal(static.run(img1, x1), eager(img1, x1))


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
