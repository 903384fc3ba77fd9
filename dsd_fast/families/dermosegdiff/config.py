"""Model configurations: plain, serialisable data.

A `ModelConfig` fully determines the network's architecture (and so its state-dict keys
and shapes). The published configurations (DermoSegDiff paper, 128 x 128) are given by
name beside the small CPU configurations this project trains and tests with.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    dim_x: int                      # width of the noisy-mask stream at level 0
    dim_g: int                      # width of the image (guidance) stream at level 0
    dim_x_mults: tuple[int, ...]    # dims_x = [dim_x] + [dim_x * m for m in mults]
    dim_g_mults: tuple[int, ...]    # same length as dim_x_mults: one entry per level
    resnet_block_groups: int = 8    # GroupNorm groups of every ResnetBlock but the
                                    # bottleneck's (always 4) and the head's (always 1)
    ff_parser: bool = False         # this project's variant: FF-Parser after rb_x1
    image_size: int = 128           # model input size (square); FF-Parser weights depend on it
    channels_x: int = 1
    channels_g: int = 3
    out_dim: int = 1

    def __post_init__(self):
        # Accept lists (from JSON) but store tuples so configs hash and compare.
        object.__setattr__(self, "dim_x_mults", tuple(int(m) for m in self.dim_x_mults))
        object.__setattr__(self, "dim_g_mults", tuple(int(m) for m in self.dim_g_mults))
        if len(self.dim_x_mults) != len(self.dim_g_mults) or not self.dim_x_mults:
            raise ValueError(
                f"dim_x_mults {self.dim_x_mults} and dim_g_mults {self.dim_g_mults} must be "
                "non-empty and of the same length (one entry per level)")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) \
                or self.image_size < 1:
            raise ValueError(f"image_size must be an integer >= 1, got {self.image_size!r}")
        if self.image_size % (2 ** (self.levels - 1)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2^(levels-1) = "
                f"{2 ** (self.levels - 1)}")
        for name in ("dim_x", "dim_g", "resnet_block_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def levels(self) -> int:
        return len(self.dim_x_mults)

    @property
    def dims_x(self) -> list[int]:
        return [self.dim_x] + [self.dim_x * m for m in self.dim_x_mults]

    @property
    def dims_g(self) -> list[int]:
        return [self.dim_g] + [self.dim_g * m for m in self.dim_g_mults]

    def level_size(self, level: int) -> int:
        """Feature-map side length at encoder level `level` (level 0 = image_size)."""
        return self.image_size // (2 ** level)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dim_x_mults"] = list(self.dim_x_mults)
        d["dim_g_mults"] = list(self.dim_g_mults)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# The three published DermoSegDiff configurations (paper table; 128 x 128).
_PUBLISHED = {
    "isic2018": ModelConfig(128, 64, (1, 2, 3, 4, 5, 6), (1, 2, 4, 8, 16, 32), 8),
    "ph2": ModelConfig(128, 64, (1, 2, 3, 4, 5, 6), (1, 2, 4, 8, 16, 32), 8),
    "ham10000": ModelConfig(128, 64, (2, 2, 2, 2, 2, 2), (1, 2, 4, 8, 16, 32), 8),
}

# Small configurations for CPUs. "default" is what the bundled model is trained with;
# "tiny" keeps tests fast while still having every block type and 3 levels.
_SMALL = {
    # 64 x 64 input: a batch-5 forward takes ~0.22 s on the 2-core CPU (reference path),
    # so 25 DDIM steps x ensemble 5 fit the 8 s budget; the mask is upsampled back.
    "default": ModelConfig(16, 16, (1, 2, 4, 4), (1, 2, 4, 4), 8, ff_parser=True,
                           image_size=64),
    # The default at 80 x 80 (a size/speed point of MODEL_CARD.md; warm-started from the
    # 64 px weights, FF-Parser gates resized): ~1.5x the default's time per image, over the
    # default's 2.5 s budget (bench/size_width_speed.py).
    "default_80": ModelConfig(16, 16, (1, 2, 4, 4), (1, 2, 4, 4), 8, ff_parser=True,
                              image_size=80),
    # The default for grayscale modalities (ultrasound): one image channel. Warm-started
    # from RGB weights, its first image convolution is the RGB one summed over colours, so
    # it starts out computing exactly what the RGB model computes on a replicated gray image.
    "default_gray": ModelConfig(16, 16, (1, 2, 4, 4), (1, 2, 4, 4), 8, ff_parser=True,
                                image_size=64, channels_g=1),
    # The default for two classes (optic disc and cup, classes.py): two mask channels in
    # and two noise channels out, otherwise the default.
    "default_2class": ModelConfig(16, 16, (1, 2, 4, 4), (1, 2, 4, 4), 8, ff_parser=True,
                                  image_size=64, channels_x=2, out_dim=2),
    # default_2class at 128 px, for the fundus size study (MODEL_CARD.md, fundus-disc-cup):
    # warm-started from the 64 px weights (FF-Parser gates resized), 1,800 steps did not
    # beat 64 px (disc/cup 0.815/0.705 against 0.902/0.770 on Drishti-GS val).
    "default_2class_128": ModelConfig(16, 16, (1, 2, 4, 4), (1, 2, 4, 4), 8, ff_parser=True,
                                      image_size=128, channels_x=2, out_dim=2),
    "tiny": ModelConfig(8, 8, (1, 2, 2), (1, 2, 2), 4, ff_parser=False, image_size=16),
    "tiny_2class": ModelConfig(8, 8, (1, 2, 2), (1, 2, 2), 4, ff_parser=True, image_size=16,
                               channels_x=2, out_dim=2),
    "tiny_ff": ModelConfig(8, 8, (1, 2, 2), (1, 2, 2), 4, ff_parser=True, image_size=16),
    "tiny_gray": ModelConfig(8, 8, (1, 2, 2), (1, 2, 2), 4, ff_parser=True, image_size=16,
                             channels_g=1),
}

CONFIGS: dict[str, ModelConfig] = {**_PUBLISHED, **_SMALL}


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; known: {sorted(CONFIGS)}") from None
