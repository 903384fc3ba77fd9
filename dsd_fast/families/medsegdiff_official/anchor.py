"""The anchor ("highway") network `hwm` of the official MedSegDiff: an nnU-Net Generic_UNet
(medsegdiff.md 2.5), in eval mode only.

    encoder   5 stages of 2 units, widths 32, 64, 128, 256, 480, max-pool 2 after each
    bottleneck 2 units of 480
    decoder   bilinear x2 (align_corners False), cat with the stage's skip, 2 units
    unit      conv3x3 (bias) -> [Dropout2d(0.5), encoder and bottleneck units, training
              only] -> BatchNorm2d (running statistics in eval; attribute `instnorm`)
              -> LeakyReLU(0.01)
    cal       sigmoid(1x1 conv 32 -> 1, no bias) of the last decoder stage

V1 (`highway=True`) also gates each encoder stage with the main UNet's maps through
FF-Parsers and uses the bottleneck (reference.py adds a random projection of it).
V2 uses the decoder's 32-channel map at S/2 upsampled x2 and its 64-channel map at S/4
upsampled x4 (`anchors`), and `cal`. The original also upsamples the two deeper decoder maps
(x8, x16) and discards them, and builds a fresh random Conv2d(480, 512, 1) in every forward
whose output V2 discards: neither changes an output, so neither is computed here (the
original's forward advances the CPU random generator by those draws; this one does not).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ANCHOR_WIDTHS

ENCODER_DROPOUT = 0.5        # nnU-Net's default, kept by MedSegDiff for encoder + bottleneck


class FFParser(nn.Module):
    """V1's FF-Parser: irfft2(rfft2(x, "ortho") * complex(w), s=(H, W), "ortho") in float32,
    `complex_weight` (C, H, H/2 + 1, 2) = (real, imag), its shape fixed by a 256 px input."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.complex_weight = nn.Parameter(torch.zeros(channels, size, size // 2 + 1, 2))

    def forward(self, x):
        h, w = x.shape[-2:]
        if h != w:
            raise ValueError(f"the FF-Parser needs square maps, got {h} x {w}")
        f = torch.fft.rfft2(x.float(), dim=(2, 3), norm="ortho")
        f = f * torch.view_as_complex(self.complex_weight)
        return torch.fft.irfft2(f, s=(h, w), dim=(2, 3), norm="ortho")


class ConvUnit(nn.Module):
    """conv3x3 -> [Dropout2d] -> BatchNorm (`instnorm`) -> LeakyReLU(0.01). The dropout
    (nnU-Net's, p = 0.5 in the encoder and bottleneck, none in the decoder) acts only in
    training (loss.py) and holds no weights."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.instnorm = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)

    def forward(self, x):
        x = self.conv(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return F.leaky_relu(self.instnorm(x), 0.01)


class Stack(nn.Module):
    """`StackedConvLayers`: units in `blocks` (keys `.blocks.{k}.conv`, `.blocks.{k}.instnorm`)."""

    def __init__(self, cin: int, cout: int, units: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.Sequential(ConvUnit(cin, cout, dropout),
                                    *[ConvUnit(cout, cout, dropout) for _ in range(units - 1)])

    def forward(self, x):
        return self.blocks(x)


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    # the original's hwUpsample: F.interpolate with an integer scale factor pair
    return F.interpolate(x, scale_factor=(factor, factor), mode="bilinear", align_corners=False)


class AnchorNet(nn.Module):
    """hwm: image (B, C, S, S), S a multiple of 32 -> (anchor32 (B, 32, S, S),
    anchor64 (B, 64, S, S), cal (B, 1, S, S))."""

    def __init__(self, in_channels: int = 3, highway: bool = False):
        super().__init__()
        w = ANCHOR_WIDTHS
        if highway:
            # V1 (medsegdiff.md 2.6): per encoder stage d = 0..3, a 1x1 conv from the main
            # UNet's d-th downsampled map (128, 128, 256, 256 channels) to the stage width,
            # an FF-Parser built for a 256 px input, and a 1x1 conv to a 1-channel gate.
            self.conv_trans_blocks_a = nn.ModuleList(
                nn.Conv2d((d // 2 + 1) * 128, w[d], 1) for d in range(4))
            self.conv_trans_blocks_b = nn.ModuleList(nn.Conv2d(w[d], 1, 1) for d in range(4))
            self.ffparser = nn.ModuleList(FFParser(w[d], 128 >> d) for d in range(4))
        ins = (in_channels,) + w[:-1]
        p = ENCODER_DROPOUT
        self.conv_blocks_context = nn.ModuleList(
            [Stack(ci, co, 2, p) for ci, co in zip(ins, w)]
            + [nn.Sequential(Stack(w[-1], w[-1], 1, p), Stack(w[-1], w[-1], 1, p))])
        # decoder stage u: cat(up(x), skip of width s) -> s -> the next skip's width
        skips = w[::-1]                                        # 480, 256, 128, 64, 32
        nxt = skips[1:] + (skips[-1],)                         # 256, 128, 64, 32, 32
        self.conv_blocks_localization = nn.ModuleList(
            nn.Sequential(Stack(2 * s, s, 1), Stack(s, n, 1)) for s, n in zip(skips, nxt))
        self.seg_outputs = nn.ModuleList([nn.Conv2d(w[0], 1, 1, bias=False)])

    def forward(self, image: torch.Tensor):
        decoded, _, cal = self._run(image, None)
        # decoded: 256@S/16, 128@S/8, 64@S/4, 32@S/2, 32@S
        return _up(decoded[3], 2), _up(decoded[2], 4), cal

    def highway(self, image: torch.Tensor, hs: list[torch.Tensor]):
        """V1: (bottleneck (B, 480, S/32, S/32), cal), the encoder gated by the main UNet's
        four downsampled maps `hs` through the FF-Parsers."""
        _, bottleneck, cal = self._run(image, list(hs))
        return bottleneck, cal

    def gate(self, d: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        g = self.ffparser[d](self.conv_trans_blocks_a[d](h))
        return x * self.conv_trans_blocks_b[d](g) * g.mean(dim=(2, 3), keepdim=True)

    def _run(self, image, hs):
        skips, x = [], image
        for d, stage in enumerate(self.conv_blocks_context[:-1]):
            x = stage(x)
            skips.append(x)                      # the skip is taken before pool and gate
            x = F.max_pool2d(x, 2)
            if hs:
                x = self.gate(d, x, hs.pop(0))
        x = self.conv_blocks_context[-1](x)
        bottleneck = x
        decoded = []
        for u, stage in enumerate(self.conv_blocks_localization):
            x = stage(torch.cat((_up(x, 2), skips[-(u + 1)]), dim=1))
            decoded.append(x)
        return decoded, bottleneck, torch.sigmoid(self.seg_outputs[0](x))
