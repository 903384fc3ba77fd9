"""Several classes per model (#35 item 3): class names, and one label map from K class masks.

A mask-diffusion model with K mask channels (DermoSegDiff's channels_x, med-seg-diff-pytorch's
mask_channels) denoises K binary masks at once, one per class, each in [-1, 1]. What a user
gets for K > 1:

    probability, std   (K, H, W): class k's ensemble mean / spread, as for one class
    region k           probability[k] > 0.5 (or that class's STAPLE / mean-squared rule)
    mask               (H, W) uint8 label map: 0 background, k = the k-th class
                       (1-based: classes[k - 1]), where regions overlap the later class wins

Names come from the model file's metadata "classes" (a JSON list); without it a one-channel
model's class is "lesion" and a K-channel model's are "class1" .. "classK". Whether classes
are nested comes from "classes_nested" (JSON true / false, default true for K > 1):

  nested (default)  each class lies inside the one before it (optic disc, then cup; BraTS
                    whole tumour, tumour core, enhancing core). Each channel is trained as
                    the complete binary mask of its class (Drishti-GS stores the disc mask
                    with the cup inside it), so the channels overlap by design and the inner
                    (later) class wins: the disc region is label > 0, the cup label 2, and
                    class k's region is read back from the label map as label >= k.
  exclusive         classes do not overlap (organs side by side): a pixel where several
                    probabilities pass 0.5 goes to the most probable class, class k's region
                    is label == k.
Nested is the default because it is the layout of the data sets with several classes that
these families were published on (optic cup and disc, BraTS regions); a model of exclusive
classes says "classes_nested": false in its file.
"""
from __future__ import annotations

import json
import re

import numpy as np

BINARY_CLASSES = ("lesion",)
MAX_CLASSES = 255                  # labels are uint8
# Class names become parts of output file names (<image>_prob_<class>.png): keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


def default_classes(k: int) -> tuple[str, ...]:
    """("lesion",) for one mask channel, ("class1", ..., "classK") for K."""
    return BINARY_CLASSES if k == 1 else tuple(f"class{i + 1}" for i in range(k))


def check_classes(names, k: int) -> tuple[str, ...]:
    """`names` (a sequence of str) checked against a model of `k` mask channels."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"classes must be a list of names, got {names!r}")
    names = tuple(names)
    if len(names) != k:
        raise ValueError(f"{len(names)} class names {list(names)} for a model of {k} mask "
                         f"channel{'s' if k > 1 else ''}")
    if not 1 <= k <= MAX_CLASSES:
        raise ValueError(f"a model has 1..{MAX_CLASSES} classes, got {k}")
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"class names are letters, digits, '_' and '-' (they name output "
                         f"files), up to 40 characters; got {bad}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must differ, got {list(names)}")
    return names


def classes_from_metadata(meta: dict, k: int) -> tuple[tuple[str, ...] | None, bool | None]:
    """(names or None, nested or None) from a file's metadata "classes" / "classes_nested";
    ValueError where they are malformed or do not fit the model's `k` mask channels."""
    names = nested = None
    raw = meta.get("classes")
    if raw is not None:
        try:
            names = json.loads(raw)
        except ValueError:
            raise ValueError(f"the file's classes metadata is not a JSON list: {raw!r}") from None
        names = check_classes(names, k)
    raw = meta.get("classes_nested")
    if raw is not None:
        if raw not in ("true", "false"):
            raise ValueError(f"the file's classes_nested metadata must be true or false, "
                             f"got {raw!r}")
        nested = raw == "true"
    return names, nested


def class_metadata(names: tuple[str, ...], nested: bool) -> dict:
    """The metadata entries a file of these classes carries (the inverse of the above)."""
    return {"classes": json.dumps(list(names)), "classes_nested": json.dumps(bool(nested))}


def labels_from_regions(regions: np.ndarray) -> np.ndarray:
    """(K, H, W) bool class regions -> (H, W) uint8 labels: the highest k whose region holds
    the pixel (1-based), 0 where none does. The later class wins where regions overlap."""
    k = regions.shape[0]
    labels = np.zeros(regions.shape[1:], np.uint8)
    for i in range(k):
        labels[regions[i]] = i + 1
    return labels


def label_map(regions: np.ndarray, nested: bool,
              probability: np.ndarray | None = None) -> np.ndarray:
    """(K, H, W) bool regions (each class's own rule, e.g. probability > 0.5) -> (H, W)
    uint8 labels. Nested: the inner (later) class wins. Exclusive: a pixel in several regions
    goes to the class of highest `probability` (K, H, W) (ties: the first)."""
    regions = np.asarray(regions, dtype=bool)
    if regions.ndim != 3:
        raise ValueError(f"class regions are (K, H, W), got shape {regions.shape}")
    if not nested and regions.shape[0] > 1:
        if probability is None:
            raise ValueError("exclusive classes need the probabilities to settle overlaps")
        p = np.where(regions, probability, -1.0)
        best = p.argmax(axis=0)
        regions = regions & (np.arange(regions.shape[0])[:, None, None] == best[None])
    return labels_from_regions(regions)


def class_regions(labels: np.ndarray, k: int, nested: bool) -> np.ndarray:
    """(H, W) labels -> (K, H, W) bool: class i's region (1-based i = index + 1) is
    labels >= i when nested (the disc includes the cup), labels == i when exclusive."""
    labels = np.asarray(labels)
    idx = np.arange(1, k + 1)[:, None, None]
    return labels[None] >= idx if nested else labels[None] == idx


def load_class_mask(path) -> torch.Tensor:
    """One class's mask file -> (H, W) bool: nonzero where the file is binary (0/255, 0/1),
    else > 127 of 255 (half the range of other depths): the majority of Drishti-GS's soft
    4-expert maps (0, 64, 128, 191, 255: 2 of 4 experts and more). Per-class soft maps are
    expected here, so no warning is given for them."""
    import torch

    from .images import load_image_file
    arr = np.asarray(load_image_file(path))
    if arr.ndim == 3:
        arr = arr[..., 0]
    values = np.unique(arr)
    if values.size <= 1 or (values.size == 2 and values[0] == 0):
        return torch.from_numpy(arr > 0)
    cut = 127 if arr.dtype == np.uint8 else 0.5 * (65535 if arr.dtype == np.uint16 else 1)
    return torch.from_numpy(arr > cut)


def load_label_map(path, k: int) -> np.ndarray:
    """A label-map file (values 0..k: 0 background, i = the i-th class) -> (H, W) uint8;
    ValueError naming the file when it holds other values (a 0/255 mask is not one)."""
    from .images import load_image_file
    arr = np.asarray(load_image_file(path))
    if arr.ndim == 3:
        arr = arr[..., 0]
    top = int(arr.max()) if arr.size else 0
    if not np.issubdtype(arr.dtype, np.integer) or int(arr.min()) < 0 or top > k:
        raise ValueError(f"{path}: not a label map of {k} classes (values 0..{k}); its "
                         f"values reach {top}")
    return arr.astype(np.uint8)


def truth_regions(masks: np.ndarray, nested: bool) -> np.ndarray:
    """(K, H, W) bool ground-truth class masks -> their regions under the rule the
    predictions' regions follow (label_map then class_regions): nested, a class's region
    includes the inner classes' (a disc mask that leaves the cup out still scores as the
    disc with its cup); exclusive, an overlap goes to the first class."""
    masks = np.asarray(masks, dtype=bool)
    labels = label_map(masks, nested, masks.astype(np.float32))
    return class_regions(labels, masks.shape[0], nested)
