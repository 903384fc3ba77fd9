"""DiffSeg (Shuai et al. 2024; official code github CheneyNine/DiffSeg, MIT) configuration.

The network fields are the official `UNetModel` arguments (../shared/docs/diffseg.md 4); the
others are what no checkpoint stores (9): the diffusion length T the model was trained
with (the t = 0 noise level depends on it), its input range, and the attention head count.
Defaults follow the newest code (run.py): T 1000, inputs in [-1, 1], 4 heads.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

INPUT_RANGES = ("-1..1", "0..1")


@dataclass(frozen=True)
class DiffSegConfig:
    model_channels: int = 96
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = ()     # downsampling factors with attention
    num_heads: int = 4
    in_channels: int = 3
    out_channels: int = 3
    groups: int = 32                                # GroupNorm everywhere
    timesteps: int = 1000                           # T of the linear schedule
    input_range: str = "-1..1"
    image_size: int = 128                           # the published preprocessing's size

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions",
                           tuple(int(r) for r in self.attention_resolutions))
        for name in ("model_channels", "num_res_blocks", "num_heads", "in_channels",
                     "out_channels", "groups", "timesteps", "image_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.channel_mult:
            raise ValueError("channel_mult needs at least one level")
        widths = {self.model_channels * m for m in self.channel_mult} | {self.model_channels}
        if any(w % self.groups for w in widths):
            raise ValueError(f"every width {sorted(widths)} must be a multiple of the "
                             f"{self.groups} GroupNorm groups")
        if self.input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {INPUT_RANGES}, got "
                             f"{self.input_range!r}")
        if self.image_size % self.size_multiple:
            raise ValueError(f"image_size must be a multiple of {self.size_multiple}")

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (the skips must line up)."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffSegConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DiffSegConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "DiffSegConfig":
        return dataclasses.replace(self, **changes)


DIFFSEG_CONFIGS: dict[str, DiffSegConfig] = {
    "diffseg_published": DiffSegConfig(),                    # 13.8 M parameters per model
    "diffseg_tiny": DiffSegConfig(model_channels=32, channel_mult=(1, 2), image_size=32),
}
