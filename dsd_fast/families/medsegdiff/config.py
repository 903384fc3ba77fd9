"""MedSegDiff (lucidrains' `med-seg-diff-pytorch` 0.3.3) configuration: plain, serialisable.

The network fields mirror the package's `Unet` arguments (../shared/docs/medsegdiff.md 1.3);
the diffusion fields mirror its `MedSegDiff` wrapper (1.7), whose defaults the package's
driver script never changes: T = 1000, cosine schedule, noise prediction.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

OBJECTIVES = {"pred_noise": "eps", "pred_x0": "x0", "pred_v": "v"}
SCHEDULES = ("cosine", "linear")


@dataclass(frozen=True)
class MedSegDiffConfig:
    dim: int                                   # width of level 0 (and of both 7x7 stems)
    image_size: int                            # the only input size (FF-Parser maps fix it)
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    full_self_attn: tuple[bool, ...] = (False, False, False, True)   # per level
    attn_heads: int = 4
    attn_dim_head: int = 32
    mid_transformer_depth: int = 1
    self_condition: bool = False
    resnet_block_groups: int = 8               # not the conditioners' blocks: always 8
    skip_connect_condition_fmaps: bool = False
    dynamic_ff_parser: bool = False            # `dynamic_ff_parser_attn_map`
    mask_channels: int = 1
    input_img_channels: int = 3
    # conditioning_kwargs of the dynamic FF-Parser's ViT (its heads are always 4)
    cond_dim_head: int = 32
    cond_depth: int = 4
    cond_patch_size: int = 16
    # the MedSegDiff wrapper: what the network was trained to predict, over which schedule
    timesteps: int = 1000
    beta_schedule: str = "cosine"
    objective: str = "pred_noise"

    def __post_init__(self):
        object.__setattr__(self, "dim_mults", tuple(int(m) for m in self.dim_mults))
        object.__setattr__(self, "full_self_attn", tuple(bool(a) for a in self.full_self_attn))
        if not self.dim_mults or len(self.full_self_attn) != len(self.dim_mults):
            raise ValueError(f"full_self_attn {self.full_self_attn} needs one entry per level of "
                             f"dim_mults {self.dim_mults}")
        for name in ("dim", "image_size", "attn_heads", "attn_dim_head", "resnet_block_groups",
                     "mask_channels", "input_img_channels", "timesteps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.image_size % (2 ** (self.levels - 1)):
            raise ValueError(f"image_size {self.image_size} must be divisible by "
                             f"2^(levels-1) = {2 ** (self.levels - 1)}")
        if self.dynamic_ff_parser and any(self.level_size(i) % self.cond_patch_size
                                          for i in range(self.levels)):
            raise ValueError(f"the dynamic FF-Parser needs every level's size divisible by "
                             f"{self.cond_patch_size}: image_size {self.image_size} gives "
                             f"{[self.level_size(i) for i in range(self.levels)]}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got "
                             f"{self.objective!r}")
        if self.beta_schedule not in SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {SCHEDULES}, got "
                             f"{self.beta_schedule!r}")

    @property
    def levels(self) -> int:
        return len(self.dim_mults)

    @property
    def dims(self) -> list[int]:
        return [self.dim] + [self.dim * m for m in self.dim_mults]

    def level_size(self, level: int) -> int:
        """Feature size at encoder level `level`; the last level keeps the one before it."""
        return self.image_size // 2 ** min(level, self.levels - 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dim_mults"], d["full_self_attn"] = list(self.dim_mults), list(self.full_self_attn)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "MedSegDiffConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MedSegDiffConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "MedSegDiffConfig":
        return dataclasses.replace(self, **changes)


MSD_CONFIGS: dict[str, MedSegDiffConfig] = {
    # the package's README / driver defaults
    "msd_default_128": MedSegDiffConfig(64, 128),
    # the bundled PH2 model: the package's defaults at 16 wide and 64 px (3.46 M parameters;
    # a batch-5 forward costs about what the bundled DermoSegDiff's does, measured)
    "msd_ph2_64": MedSegDiffConfig(16, 64),
    # the same network trained to predict the clean mask (the package's objective="pred_x0")
    "msd_ph2_64_x0": MedSegDiffConfig(16, 64, objective="pred_x0"),
    # the same for grayscale modalities (ultrasound): one image channel, warm-started from
    # the colour model with its conditioning stem summed over colours (the family's
    # adapted_state_dict)
    "msd_gray_64_x0": MedSegDiffConfig(16, 64, objective="pred_x0", input_img_channels=1),
    # small configs for tests
    "msd_tiny": MedSegDiffConfig(8, 16, (1, 2), (False, True)),
    "msd_tiny_sc": MedSegDiffConfig(8, 16, (1, 2, 2), (False, False, True), self_condition=True,
                                    skip_connect_condition_fmaps=True),
}
