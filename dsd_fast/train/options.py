"""What a training run is asked to do (TrainOptions), checked when made, and the learning-rate
schedule it follows. The loop that runs it is loop.py.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..classes import check_classes
from ..diffusion import SPACINGS
from ..options import parse_setting
from ..families import find_config
from ..precision import PRECISIONS
from .sources import DataSource


LR_SCHEDULES = ("constant", "cosine")
VAL_CROPS = ("full", "zoom")
# The validation setting of runs made before it could be chosen, and of a resumed run whose
# saved options lack it: 10 DDIM steps x 3 members on the leading grid, whole images.
OLD_VALIDATION = {"val_steps": 10, "val_ensemble": 3, "val_spacing": "leading",
                  "val_crop": "full"}


def parse_val_setting(text: str) -> tuple[int, int, str]:
    """'STEPS,MEMBERS,SPACING' (e.g. '5,25,trailing') -> (steps, members, spacing)."""
    return parse_setting(text, "--val-setting")


def saved_validation(options: dict) -> dict:
    """A run's validation setting from its saved options (`TrainOptions.to_dict()`): the
    fields of OLD_VALIDATION, each the saved value or, for a run saved before it existed,
    the old default."""
    return {k: options.get(k, v) for k, v in OLD_VALIDATION.items()}


def scheduled_lr(lr: float, schedule: str, step: int, first: int, last: int) -> float:
    """The learning rate for the update that makes step `step + 1` of a run that started at
    step `first` and ends at `last`."""
    if schedule == "constant" or last <= first:
        return lr
    done = min(1.0, max(0.0, (step - first) / (last - first)))
    return lr * 0.5 * (1.0 + math.cos(math.pi * done))


@dataclass
class TrainOptions:
    image_dir: str | None
    mask_dir: str | None
    out_dir: str
    train_ids: str | None = None        # file with one stem per line; None = every pair
    val_ids: str | None = None
    config: str = "default"
    total_steps: int = 20000
    batch_size: int = 16
    lr: float = 1e-4                   # published; the default model used more (MODEL_CARD.md)
    betas: tuple[float, float] = (0.7, 0.99)
    ema_beta: float = 0.9999
    ema_update_after: int = 500
    ema_power: float = 0.9             # published for PH2
    gamma: float = 0.25             # DermoSegDiff's boundary-loss exponent (its PH2 value)
    boundary_loss: bool = True
    val_every: int = 500
    # Validation's setting, which chooses best.safetensors: DDIM steps x ensemble members on
    # the val_spacing grid ("leading"/"trailing", diffusion/ddim.py), on the whole image
    # ("full") or with segment(crop="zoom")'s passes ("zoom", loop.py's
    # validate_classes). Pick what the model will ship with: leading 10 x 3 ranks models
    # unlike the 5 trailing x 25 they run at. Defaults: OLD_VALIDATION.
    val_steps: int = 10
    val_ensemble: int = 3
    val_spacing: str = "leading"
    val_crop: str = "full"
    checkpoint_every: int = 100
    log_every: int = 50
    seed: int = 0
    threads: int | None = None
    # Warm start for a new run folder (ignored when OUT/last.pt exists): a .safetensors model
    # of the same config whose weights become both the online and the EMA weights; the
    # optimizer starts fresh and the step counter continues from the file's "step" metadata.
    # This is how a run continues across machines that keep only the bundled weights.
    init_from: str | None = None
    # Several datasets at once (sources.py): a list of DataSource fields (dicts) used
    # instead of image_dir/mask_dir/train_ids/val_ids. Selection is on the mean over sources
    # of each source's val Dice, so a small source counts as much as a big one.
    sources: list[dict] | None = None
    augmentation: str = "basic"        # "basic" (the PH2 model's), "strong" (augment.py)
    # "constant", or "cosine": lr * (1 + cos(pi * p)) / 2, p the fraction done of the steps
    # this run makes (from its warm-start step to total_steps). Fine-tuning at a constant lr
    # flattened (MODEL_CARD.md); annealing is the usual way to take the last of it.
    lr_schedule: str = "constant"
    # "bf16": forward passes under bfloat16 autocast (precision.py's Bf16Denoiser: the
    # network's outputs come back float32, so the losses, gradients, Adam and the EMA stay
    # float32 on float32 weights). ~2x faster steps where the CPU has native BF16 (here, one
    # core, batch 8: msd_official_64 7.5 -> 3.6 s per step); float32 with a warning elsewhere.
    precision: str = "fp32"
    # Where the networks, batches and optimizer live: "cpu", "cuda" or "cuda:N". Random
    # draws stay on the CPU generator, so a run's batches and timesteps are the same on any
    # device; checkpoints are written device-free (resume on another device works).
    device: str = "cpu"
    # A model of several classes (classes.py; a config of K mask channels, e.g.
    # default_2class): the class names, in channel order, which are also the mask files'
    # suffixes (<stem>_<class>.png). With sources they come from the sources' `classes`.
    # Saved in the model file's metadata with `classes_nested`.
    classes: list[str] | None = None
    classes_nested: bool = True
    # The share of pairs first cropped around their mask (augment.roi_crop): the views of
    # segment(crop="zoom")'s second pass. > 0 holds pairs at ROI_HOLD x the model size.
    roi_crops: float = 0.0

    def __post_init__(self):
        """Refuse what would train nothing or garbage (steps <= 0, a NaN learning rate)."""
        if self.sources:
            if self.image_dir or self.mask_dir or self.train_ids or self.val_ids:
                raise ValueError("give either sources or image_dir/mask_dir/train_ids/"
                                 "val_ids, not both")
            self.sources = [DataSource(**s).to_dict() for s in self.sources]
            names = [s["name"] for s in self.sources]
            if len(set(names)) != len(names):
                raise ValueError(f"source names must differ, got {names}")
            per_source = {s["name"]: s.get("classes") for s in self.sources}
            if len(set(per_source.values())) > 1:
                raise ValueError(f"every source must have the same classes, got {per_source}")
            given = next(iter(per_source.values()))
            if self.classes is not None and given is not None \
                    and list(self.classes) != given.split("+"):
                raise ValueError(f"classes {list(self.classes)} differ from the sources' "
                                 f"{given!r}")
            if given is not None:
                self.classes = given.split("+")
            elif self.classes is not None:
                raise ValueError("with sources, give the classes in each source "
                                 "(classes=A+B), so each reads its per-class masks")
        elif not (self.image_dir and self.mask_dir):
            raise ValueError("training needs image_dir and mask_dir, or sources")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, "
                             f"got {self.lr_schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_train_device(self.device)
        if isinstance(self.roi_crops, bool) or not isinstance(self.roi_crops, (int, float)) \
                or not 0 <= self.roi_crops <= 1:
            raise ValueError(f"roi_crops must be a number in 0..1 (the share of training "
                             f"pairs cropped around their mask), got {self.roi_crops!r}")
        if self.augmentation not in ("basic", "strong"):
            raise ValueError(f"augmentation must be 'basic' or 'strong', "
                             f"got {self.augmentation!r}")
        ints = {"total_steps": 1, "batch_size": 1, "val_every": 1, "val_steps": 1,
                "val_ensemble": 1, "checkpoint_every": 1, "log_every": 1, "seed": 0}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")
        for name in ("lr", "ema_beta", "ema_power", "gamma"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (name == "lr" and v == 0):
                bound = "> 0" if name == "lr" else ">= 0"
                raise ValueError(f"{name} must be a finite number {bound}, got {v!r}")
        try:
            family, config = find_config(self.config)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        self._check_validation(family, config)
        if self.classes is not None:
            self.classes = list(check_classes(self.classes, len(self.classes)))
        k = family.mask_channels(config)
        if k != len(self.classes or [None]):
            raise ValueError(
                f"config {self.config!r} segments {k} class{'es' if k > 1 else ''} (mask "
                f"channels) but {len(self.classes or [None])} "
                + (f"classes were given ({self.classes})" if self.classes else
                   "mask per image is read: give the class names (--classes A+B, or "
                   "classes=A+B in each --source), one mask file <stem>_<class> each"))
        if not isinstance(self.classes_nested, bool):
            raise ValueError(f"classes_nested must be True or False, "
                             f"got {self.classes_nested!r}")

    def _check_validation(self, family, config) -> None:
        """The validation setting against what the config's model can run."""
        if self.val_spacing not in SPACINGS:
            raise ValueError(f"val_spacing must be one of {SPACINGS}, got {self.val_spacing!r}")
        if self.val_crop not in VAL_CROPS:
            raise ValueError(f"val_crop must be one of {VAL_CROPS}, got {self.val_crop!r}")
        T = family.default_schedule(config).T
        if self.val_steps > T:
            raise ValueError(f"val_steps must be at most the config's {T} diffusion steps, "
                             f"got {self.val_steps}")
        own_grid = family.sampling_conventions(config).ddim_timesteps is not None
        if own_grid and self.val_spacing != "leading":
            raise ValueError(f"config {self.config!r} walks its original code's own DDIM grid "
                             f"(spacing 'leading' only), got val_spacing "
                             f"{self.val_spacing!r}")
        if self.val_crop not in family.choices(config).crops:
            raise ValueError(f"config {self.config!r} does not take crop "
                             f"{self.val_crop!r}, got val_crop {self.val_crop!r}")

    @property
    def validation(self) -> dict:
        """The validation setting ({val_steps, val_ensemble, val_spacing, val_crop})."""
        return {k: getattr(self, k) for k in OLD_VALIDATION}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def check_train_device(device: str) -> None:
    """Refuse a device this machine cannot train on, saying what it has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device={device!r} asked for, but torch sees no CUDA device "
                             f"(torch {torch.__version__}: a CPU build, or no driver)")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device={device!r} asked for, but torch sees {n} CUDA "
                             f"device(s)")
