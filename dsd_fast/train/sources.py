"""Training on several datasets at once (PH2 + HAM10000), each with a sampling weight, so
80 PH2 images are not drowned by 9,000 HAM10000 ones.

On the command line a source is one `--source` option of key=value pairs:

    --source name=ph2,images=DIR,masks=DIR,train=IDS.txt,val=IDS.txt,weight=0.3
    --source name=ham,images=DIR,masks=DIR,train=IDS.txt,val=IDS.txt,weight=0.7,val_limit=100

`weight` is the share of training batches' images drawn from that source (normalised over
sources); `val_limit` validates on the first N ids of `val` only (validation time).
`classes=disc+cup` (a model of several classes, classes.py) reads one mask per class,
`<stem>_disc.png` and `<stem>_cup.png` as Drishti-GS stores them, binarised at > 127.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..classes import check_classes
from ..preprocess import minmax_normalise, resize_image
from .augment import roi_crop, strong_augment
from .data import Sample, augment, load_pairs, match_pairs, read_id_list

_KEYS = {"name", "images", "masks", "train", "val", "weight", "val_limit", "classes"}


@dataclass(frozen=True)
class DataSource:
    name: str
    images: str
    masks: str
    train: str | None = None      # file of stems; None = every pair
    val: str | None = None
    weight: float = 1.0
    val_limit: int | None = None
    classes: str | None = None    # "disc+cup": one mask per class, <stem>_<class>; None: one

    def __post_init__(self):
        if not self.name or not self.images or not self.masks:
            raise ValueError(f"source {self.name!r}: name, images and masks are required")
        if not (self.weight > 0):
            raise ValueError(f"source {self.name!r}: weight must be > 0, got {self.weight}")
        if self.val_limit is not None and self.val_limit < 1:
            raise ValueError(f"source {self.name!r}: val_limit must be >= 1")
        if self.classes is not None:
            names = self.classes.split("+")
            try:
                check_classes(names, len(names))
            except ValueError as e:
                raise ValueError(f"source {self.name!r}: classes={self.classes!r}: {e}") \
                    from None

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The class names (mask suffixes) in order, or None for one mask per image."""
        return tuple(self.classes.split("+")) if self.classes else None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_source(spec: str) -> DataSource:
    """'name=ph2,images=DIR,masks=DIR[,train=F][,val=F][,weight=W][,val_limit=N]
    [,classes=A+B]'."""
    fields = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _KEYS:
            raise ValueError(f"--source {spec!r}: expected key=value pairs with keys "
                             f"{sorted(_KEYS)}, got {part!r}")
        fields[key] = value.strip()
    missing = {"name", "images", "masks"} - set(fields)
    if missing:
        raise ValueError(f"--source {spec!r}: missing {sorted(missing)}")
    try:
        if "weight" in fields:
            fields["weight"] = float(fields["weight"])
        if "val_limit" in fields:
            fields["val_limit"] = int(fields["val_limit"])
    except ValueError:
        raise ValueError(f"--source {spec!r}: weight must be a number and val_limit an "
                         "integer") from None
    return DataSource(**fields)


def load_source(src: DataSource, size: int, hold_size: int, val_size: int | None = None
                ) -> tuple[list[Sample], list[Sample]]:
    """(training samples held at hold_size, validation samples at `val_size`: default the
    model size, larger for validation with crop="zoom")."""
    train_ids = read_id_list(src.train) if src.train else None
    classes = src.class_names
    train = load_pairs(match_pairs(src.images, src.masks, train_ids, classes), hold_size)
    val = []
    if src.val:
        ids = read_id_list(src.val)[:src.val_limit] if src.val_limit else read_id_list(src.val)
        val = load_pairs(match_pairs(src.images, src.masks, ids, classes), val_size or size)
    return train, val


class MixedBatches:
    """Endless batches drawn across sources by weight: (image (B,3,S,S), x0 (B,K,S,S) in
    [-1, 1]). Images are held as uint8 at `hold_size` (>= S) to keep 9,000 of them small;
    augmentation "strong" zooms from that resolution, "basic" is the PH2 model's recipe.
    `roi_crops` > 0: that share of pairs is first cropped around its mask (augment.roi_crop,
    for segment(crop="zoom")); 0 draws nothing for it."""

    def __init__(self, per_source: list[list[Sample]], weights: list[float], size: int,
                 batch_size: int, gen: torch.Generator, augmentation: str = "strong",
                 normalise: bool = True, roi_crops: float = 0.0):
        if augmentation not in ("strong", "basic", "none"):
            raise ValueError(f"augmentation must be 'strong', 'basic' or 'none', "
                             f"got {augmentation!r}")
        self.images = [torch.stack([(s.image * 255).round().to(torch.uint8) for s in ss])
                       for ss in per_source]
        self.masks = [torch.stack([s.mask.bool() for s in ss]) for ss in per_source]
        self.sizes = [torch.tensor([s.original_size for s in ss]) for ss in per_source]
        self.roi_crops = roi_crops
        w = torch.tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.size, self.batch_size, self.gen = size, batch_size, gen
        self.augmentation, self.normalise = augmentation, normalise

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        which = torch.multinomial(self.weights, self.batch_size, replacement=True,
                                  generator=self.gen)
        imgs, msks, sizes = [], [], []
        for k in range(len(self.images)):
            n = int((which == k).sum())
            if n:
                idx = torch.randint(0, self.images[k].shape[0], (n,), generator=self.gen)
                imgs.append(self.images[k][idx].float() / 255)
                msks.append(self.masks[k][idx].float())
                sizes.append(self.sizes[k][idx])
        img, msk = torch.cat(imgs), torch.cat(msks)
        img, msk = roi_crop(img, msk, torch.cat(sizes), self.roi_crops, self.gen, self.size)
        if self.augmentation == "strong":
            img, msk = strong_augment(img, msk, self.size, self.gen)
        else:
            if img.shape[-1] != self.size:
                img = torch.stack([resize_image(i, self.size) for i in img])
                msk = (F.interpolate(msk, size=(self.size,) * 2, mode="bilinear",
                                     align_corners=False) > 0.5).float()
            if self.augmentation == "basic":
                img, msk = augment(img, msk, self.gen)
        return (minmax_normalise(img) if self.normalise else img), msk * 2 - 1
