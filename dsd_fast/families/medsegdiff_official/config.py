"""Configuration of the official MedSegDiff code's networks (ImprintLab/MedSegDiff, MIT).

The fields mirror the flags of its `create_model_and_diffusion` (../shared/docs/medsegdiff.md
2.1-2.8). Checkpoints store only weights: `infer_config` (checkpoint.py) reads the network's
shape from them, and what no checkpoint says comes from the user with the README's ISIC
values as defaults: image_size 256, num_heads 1, 1000 linear steps, learned-range variance.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

VERSIONS = ("v2", "v1")          # V2 = `UNetModel_newpreview` (the default), V1 = v1preview
SCHEDULES = ("linear", "cosine")
ANCHOR_WIDTHS = (32, 64, 128, 256, 480)   # hwm encoder stages (nnU-Net, capped at 480)


def default_channel_mult(image_size: int) -> tuple[int, ...]:
    """The code's channel_mult when the flag is empty (create_model)."""
    table = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
             64: (1, 2, 3, 4)}
    if image_size not in table:
        raise ValueError(f"the official code has no default channel_mult for image_size "
                         f"{image_size} (only 64, 128, 256, 512); pass channel_mult")
    return table[image_size]


@dataclass(frozen=True)
class OfficialMSDConfig:
    image_size: int = 256                      # not stored in checkpoints
    model_channels: int = 128                  # --num_channels; V2 needs 128 (32+32+64)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    # downsample factors with attention: --attention_resolutions "16" at 256 px -> (16,)
    attention_ds: tuple[int, ...] = (16,)
    num_heads: int = 1                         # not stored
    num_head_channels: int = -1                # not stored (-1: use num_heads)
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False      # not stored (same result with one head)
    in_channels: int = 4                       # image channels + the mask channel
    out_channels: int = 2                      # hard-coded: eps and the variance value
    version: str = "v2"
    # the diffusion (not stored): --diffusion_steps, --noise_schedule, --learn_sigma
    timesteps: int = 1000
    noise_schedule: str = "linear"
    learn_sigma: bool = True

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_ds", tuple(sorted(int(a) for a in
                                                              self.attention_ds)))
        for name in ("image_size", "model_channels", "num_res_blocks", "in_channels",
                     "out_channels", "timesteps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")
        if self.noise_schedule not in SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {SCHEDULES}, got "
                             f"{self.noise_schedule!r}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (the anchor network pools "
                             f"5 times), got {self.image_size}")
        if self.version == "v2" and self.model_channels != 128:
            raise ValueError("V2 adds the anchor network's 32 + 32 + 64 channels to the first "
                             f"block: model_channels must be 128, got {self.model_channels}")
        if self.version == "v1" and (self.image_size != 256 or self.model_channels != 128
                                     or self.channel_mult != (1, 1, 2, 2, 4, 4)
                                     or self.num_res_blocks != 2):
            raise ValueError("V1's FF-Parsers and highway convolutions are built for 256 px, "
                             "128 channels, channel_mult (1, 1, 2, 2, 4, 4) and 2 res blocks "
                             "only (the official code fails elsewhere)")
        for c in self.widths:
            if c % 32:
                raise ValueError(f"every level's width must be a multiple of 32 (GroupNorm "
                                 f"with 32 groups): channel_mult {self.channel_mult} gives "
                                 f"{self.widths}")
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")

    # ------------------------------------------------------------------ derived shapes
    @property
    def widths(self) -> list[int]:
        return [self.model_channels * m for m in self.channel_mult]

    def heads_for(self, channels: int) -> int:
        if self.num_head_channels == -1:
            return self.num_heads
        if channels % self.num_head_channels:
            raise ValueError(f"{channels} channels are not divisible by num_head_channels "
                             f"{self.num_head_channels}")
        return channels // self.num_head_channels

    @property
    def image_channels(self) -> int:
        return self.in_channels - 1

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channel_mult"], d["attention_ds"] = list(self.channel_mult), list(self.attention_ds)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "OfficialMSDConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown OfficialMSDConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "OfficialMSDConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_flags(cls, image_size: int = 256, num_channels: int = 128,
                   num_res_blocks: int = 2, channel_mult: str = "",
                   attention_resolutions: str = "16", **rest) -> "OfficialMSDConfig":
        """From the official script's flags (strings as its argparse takes them)."""
        mult = (default_channel_mult(image_size) if channel_mult == ""
                else tuple(int(m) for m in channel_mult.split(",")))
        ds = tuple(image_size // int(r) for r in attention_resolutions.split(","))
        return cls(image_size=image_size, model_channels=num_channels,
                   num_res_blocks=num_res_blocks, channel_mult=mult, attention_ds=ds, **rest)


OFFICIAL_CONFIGS: dict[str, OfficialMSDConfig] = {
    # the README's ISIC flags (129.40 M parameters, ~521 GFLOP per forward at 256 px)
    "msd_official_isic": OfficialMSDConfig(),
    "msd_official_isic_v1": OfficialMSDConfig(version="v1"),
    # a small V2 to train on CPU (64 px, the anchor's 128 channels, one block per level):
    # 35.2 M parameters (15.7 M of them the anchor network), ~5 s per step at batch 8 on one
    # core of this project's machine
    "msd_official_64": OfficialMSDConfig(image_size=64, channel_mult=(1, 1, 2, 2),
                                         num_res_blocks=1, attention_ds=(8,), num_heads=4),
    # small configs for tests (the golden data of tests/data/msd_official_golden.safetensors)
    "msd_official_tiny": OfficialMSDConfig(image_size=32, channel_mult=(1, 2),
                                           num_res_blocks=1, attention_ds=(2,)),
    "msd_official_tiny_ss": OfficialMSDConfig(image_size=64, channel_mult=(1, 1, 2),
                                              num_res_blocks=2, attention_ds=(2, 4),
                                              num_heads=4, use_scale_shift_norm=True,
                                              resblock_updown=True),
}
