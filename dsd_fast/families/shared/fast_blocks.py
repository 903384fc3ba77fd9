"""Fused residual blocks shared by the families' fast models.

Both families' ResnetBlock is conv3x3 -> GroupNorm -> x * (scale + 1) + shift -> SiLU, twice,
plus a residual; the fast form runs GroupNorm, modulation and SiLU as one op
(`ops.group_norm_silu`). The conv weight is given ready to use: DermoSegDiff passes its
weight-standardised weight (folded once), MedSegDiff its plain weight.

On the CPU the fast models run those 3x3 convolutions by Winograd F(4x4, 3x3)
(winograd.py).

A sampler calls the network with the same few timesteps for every image, so on the CPU the
time MLP's output is remembered per timestep vector (`MemoTimeMLP`) and each block's
scale/shift per remembered embedding (`FusedResnetBlock`): the same arithmetic, done once
instead of once per forward. Scratch A/B (bundled default model, batch 5, 2 threads, 60
alternating forwards per process, six processes): 0.98-1.065x per forward, median 1.035x;
segment() of one PH2 image, 25 x 5, three processes of 7 alternating pairs: 1.00, 1.06,
1.14x by medians (this machine's noise is as large); probability maps bit-identical.
"""
from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops
from ...ops import winograd
from .winograd import WinogradWeight, autocast_cpu_dtype, conv3x3


_MEMO_FLAG = "_dsd_fast_memo"       # set on embeddings a MemoTimeMLP keeps alive
# Timestep vectors remembered per time MLP. A 25-step sampler needs 25 (x the batch sizes
# it meets); DDPM-1000 reuses nothing within an image, and at the published isic2018
# network's widths one vector's scale/shifts take 0.6 MB at batch 5 (30,464 floats per
# sample): 64 bounds that (the blocks keep at most twice as many before pruning; ~80 MB at
# batch 5, far below that network's activations) and a longer table just recomputes.
MEMO_ENTRIES = 64


class MemoTimeMLP(nn.Sequential):
    """The published time MLP (same modules, same state-dict keys: it replaces the class of
    the fast copy's nn.Sequential) whose output is remembered per timestep vector on the CPU,
    without autograd. CUDA input is computed every time (reading t's values would synchronise
    and break CUDA-graph capture), and so is anything torch.compile traces. The key holds
    the autocast state, since bfloat16 autocast changes the output's dtype. The returned
    tensor is shared: nothing downstream writes to it (the fused blocks read it through
    F.silu; the tests' repeated timesteps would catch a write)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return super().forward(t)
        memo = self.__dict__.setdefault("_memo", {})
        key = (tuple(t.tolist()), t.dtype, torch.is_autocast_enabled("cpu"), autocast_cpu_dtype())
        emb = memo.get(key)
        if emb is None:
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            emb = memo[key] = super().forward(t)
            setattr(emb, _MEMO_FLAG, True)
        return emb

    def __getstate__(self):                   # pickles and copies start with no memo
        state = super().__getstate__()
        state.pop("_memo", None)
        return state


def memoize_time_mlps(model: nn.Module) -> None:
    """Give every published time MLP of a fast copy (attributes named time_mlp*) the memo."""
    for name, child in list(model.named_children()):
        if name.startswith("time_mlp") and type(child) is nn.Sequential:
            child.__class__ = MemoTimeMLP


class FusedBlock(nn.Module):
    """conv 3x3 (given weight) -> fused GroupNorm / modulation / SiLU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, norm: nn.GroupNorm):
        super().__init__()
        self.register_buffer("weight", weight.detach().contiguous().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.register_buffer("gamma", norm.weight.detach().clone())
        self.register_buffer("beta", norm.bias.detach().clone())
        self.groups, self.eps = norm.num_groups, norm.eps
        self.wino: WinogradWeight | None = None

    def enable_winograd(self) -> bool:
        """Keep the weight's Winograd transforms too (winograd.py); False (nothing
        kept) for channel counts the op cannot take."""
        k, c = self.weight.shape[:2]
        if not winograd.supported(c, k):
            return False
        self.wino = WinogradWeight(self.weight)
        return True

    def forward(self, x, scale=None, shift=None):
        h = conv3x3(x, self.weight, self.bias, self.wino)
        return ops.group_norm_silu(h, self.gamma, self.beta, self.groups, self.eps, scale, shift)


class FusedResnetBlock(nn.Module):
    """block2(block1(x, scale, shift)) + res_conv(x); scale, shift = Linear(SiLU(t)) split in
    halves when the block has a time MLP (`mlp`: the reference's nn.Linear, or None)."""

    def __init__(self, mlp: nn.Linear | None, block1: FusedBlock, block2: FusedBlock,
                 res_conv: nn.Module):
        super().__init__()
        self.has_mlp = mlp is not None
        if self.has_mlp:
            self.register_buffer("mlp_weight", mlp.weight.detach().clone())
            self.register_buffer("mlp_bias", mlp.bias.detach().clone())
            self.dim_out = mlp.weight.shape[0] // 2
        self.block1, self.block2 = block1, block2
        self.res_conv = copy.deepcopy(res_conv)
        # id(remembered embedding) -> (weak reference to it, scale, shift); the weak
        # reference tells a live entry from a reused id once the time MLP's memo is cleared
        self._scale_shift_memo: dict = {}

    def scale_shift(self, time_emb: torch.Tensor):
        remembered = not torch.compiler.is_compiling() and getattr(time_emb, _MEMO_FLAG, False)
        if remembered:
            hit = self._scale_shift_memo.get(id(time_emb))
            if hit is not None and hit[0]() is time_emb:
                return hit[1], hit[2]
        ss = F.linear(F.silu(time_emb), self.mlp_weight, self.mlp_bias)         # (B, 2 C)
        scale, shift = ss[:, :self.dim_out], ss[:, self.dim_out:]
        if remembered:
            memo = self._scale_shift_memo
            if len(memo) >= MEMO_ENTRIES:        # drop the entries of cleared embeddings
                for k in [k for k, v in memo.items() if v[0]() is None]:
                    del memo[k]
            memo[id(time_emb)] = (weakref.ref(time_emb), scale, shift)
        return scale, shift

    def __getstate__(self):                   # weak references do not pickle
        state = super().__getstate__()
        state["_scale_shift_memo"] = {}
        return state

    def forward(self, x, time_emb=None):
        scale = shift = None
        if self.has_mlp and time_emb is not None:
            scale, shift = self.scale_shift(time_emb)
        h = self.block2(self.block1(x, scale, shift))
        return h.add_(self.res_conv(x))          # h is a fresh tensor: add in place


def is_channels_last(t: torch.Tensor) -> bool:
    """An NHWC tensor that is not also NCHW-contiguous (C = 1 or 1 x 1 planes are both)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
        memory_format=torch.channels_last)


class ChannelsLastOutput(nn.Module):
    """A convolution whose output is channels_last even from a 1-channel input (x_t): such a
    tensor is contiguous in both layouts, so torch keeps its NCHW strides, and the first
    concatenation with it (the head's skip of the stem's output) would come out NCHW."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).contiguous(memory_format=torch.channels_last)
