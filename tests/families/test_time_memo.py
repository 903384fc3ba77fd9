"""The fast models remember the time MLP's output and each block's scale/shift per timestep
on the CPU (fast_blocks.MemoTimeMLP): the result must be exactly what recomputing gives, for
repeated, new and mixed timesteps, other batch sizes, bfloat16 autocast and a cleared memo;
nothing is remembered with autograd on, the state dict keeps its keys, and copies and
pickles of a used model work and start empty."""
import copy
import io

import pytest
import torch
from torch import nn

from dsd_fast import get_config
from dsd_fast.families.shared import fast_blocks
from dsd_fast.families.dermosegdiff.fast import build_fast_model
from dsd_fast.families.shared.fast_blocks import FusedResnetBlock, MemoTimeMLP
from dsd_fast.families.medsegdiff.config import MSD_CONFIGS
from dsd_fast.families.medsegdiff.fast import build_fast_model as build_fast_msd
from dsd_fast.precision import native_bf16

from conftest import make_model

TIMESTEPS = ([999] * 3, [500] * 3, [999] * 3, [0, 7, 999], [500] * 3, [999] * 3)


def without_memo(fast: nn.Module) -> nn.Module:
    """A copy computing the time MLPs every call (the blocks only remember what a
    MemoTimeMLP hands them)."""
    twin = copy.deepcopy(fast)
    for m in twin.modules():
        if type(m) is MemoTimeMLP:
            m.__class__ = nn.Sequential
    return twin


def memo_sizes(fast):
    mlps = [len(m.__dict__.get("_memo", {})) for m in fast.modules() if type(m) is MemoTimeMLP]
    blocks = [len(m._scale_shift_memo) for m in fast.modules()
              if isinstance(m, FusedResnetBlock) and m.has_mlp]
    return mlps, blocks


def _dsd_inputs(b, name="tiny_ff", seed=0):
    s = get_config(name).image_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, s, s, generator=gen), torch.rand(b, 3, s, s, generator=gen)


def test_remembered_outputs_equal_recomputed_ones_bit_for_bit():
    fast = build_fast_model(make_model("tiny_ff"))
    plain = without_memo(fast)
    x, g = _dsd_inputs(3)
    with torch.inference_mode():
        for ts in TIMESTEPS:
            t = torch.tensor(ts)
            assert torch.equal(fast(x, g, t), plain(x, g, t)), ts
        one = torch.tensor([999])                # another batch size: its own entry
        assert torch.equal(fast(x[:1], g[:1], one), plain(x[:1], g[:1], one))
    mlps, blocks = memo_sizes(fast)
    # 4 distinct timestep vectors of 3 + one of 1, in each of the two time MLPs (x and g)
    assert mlps == [4, 4] and blocks and all(n == 4 for n in blocks)
    assert memo_sizes(plain) == ([], [0] * len(blocks))      # the twin remembers nothing


def test_a_repeated_timestep_does_not_run_the_time_mlp_again():
    fast = build_fast_model(make_model("tiny"))
    calls = []
    for m in fast.modules():
        if type(m) is MemoTimeMLP:
            m[1].register_forward_hook(lambda *a: calls.append(1))
    x, g = _dsd_inputs(2)
    with torch.no_grad():
        for _ in range(3):
            fast(x, g, torch.tensor([250, 250]))
    assert len(calls) == 2                       # once per time MLP, not per forward


def test_nothing_is_remembered_with_autograd_on():
    fast = build_fast_model(make_model("tiny"))
    x, g = _dsd_inputs(2)
    fast(x, g, torch.tensor([3, 3]))
    mlps, blocks = memo_sizes(fast)
    assert mlps == [0, 0] and set(blocks) == {0}


def test_a_cleared_memo_recomputes_correctly(monkeypatch):
    """With room for one entry the memo clears on every new timestep; ids of freed
    embeddings may be reused, which the blocks' weak references must catch."""
    monkeypatch.setattr(fast_blocks, "MEMO_ENTRIES", 1)
    fast = build_fast_model(make_model("tiny_ff"))
    plain = without_memo(fast)
    x, g = _dsd_inputs(3)
    with torch.no_grad():
        for ts in TIMESTEPS * 2:
            t = torch.tensor(ts)
            assert torch.equal(fast(x, g, t), plain(x, g, t)), ts
    mlps, blocks = memo_sizes(fast)
    assert mlps == [1, 1] and max(blocks) <= 2   # pruned to the live entry (+ the newest)


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bfloat16")
def test_autocast_state_is_part_of_the_key():
    fast = build_fast_model(make_model("tiny"))
    plain = without_memo(fast)
    x, g = _dsd_inputs(2)
    t = torch.tensor([600, 600])
    with torch.no_grad():
        f32 = fast(x, g, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b16, b16_plain = fast(x, g, t), plain(x, g, t)
        assert torch.equal(fast(x, g, t), f32)
    assert torch.equal(b16, b16_plain) and not torch.equal(b16, f32)
    assert memo_sizes(fast)[0] == [2, 2]


def test_state_dict_keys_and_copies_of_a_used_model():
    fast = build_fast_model(make_model("tiny"))
    plain = without_memo(fast)
    assert list(fast.state_dict()) == list(plain.state_dict())
    x, g = _dsd_inputs(2)
    t = torch.tensor([10, 10])
    with torch.no_grad():
        want = fast(x, g, t)
        buf = io.BytesIO()
        torch.save(fast, buf)                    # the blocks' weak references must not pickle
        twin = copy.deepcopy(fast)
        assert memo_sizes(twin)[0] == [0, 0] and set(memo_sizes(twin)[1]) == {0}
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)    # our own object, in memory
        assert torch.equal(twin(x, g, t), want) and torch.equal(loaded(x, g, t), want)


def test_medsegdiff_fast_model_with_the_memo():
    fast = build_fast_msd(make_model("msd_tiny"))
    plain = without_memo(fast)
    size = MSD_CONFIGS["msd_tiny"].image_size
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, size, size, generator=gen)
    img = torch.rand(3, MSD_CONFIGS["msd_tiny"].input_img_channels, size, size, generator=gen)
    with torch.inference_mode():
        for ts in TIMESTEPS:
            t = torch.tensor(ts)
            assert torch.equal(fast(x, img, t), plain(x, img, t)), ts
    assert memo_sizes(fast)[0] == [3]
