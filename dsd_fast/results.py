"""From an image's ensemble of samples to what the user gets: mask, maps, fusion, CRF.

    samples (E, S, S) in mask space [-1, 1]
    probability p = clamp((mean + 1) / 2, 0, 1); std of each sample mapped to [0, 1]
    p and std upsampled bilinearly to the original (H, W); mask = p > 0.5
The published rule "mean of samples > 0" is the same threshold as p > 0.5.

A model of K > 1 classes (classes.py) gives samples (E, K, S, S): each class's maps are made
as above, giving (K, H, W) probability, std and entropy, and `mask` is the (H, W) uint8 label
map of the classes' regions (`samples_to_class_result`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

FUSIONS = ("mean", "staple", "mean-squared")
REFINES = (None, "crf")


@dataclass
class SegmentationResult:
    mask: np.ndarray              # (H, W) bool, at the image's original size; K > 1 classes:
    #                               (H, W) uint8 labels, 0 background, k = classes[k - 1]
    probability: np.ndarray       # (H, W) float32 in [0, 1]: ensemble mean mapped to [0, 1]
    #                               ((K, H, W) for K > 1 classes: one map per class)
    std: np.ndarray               # (H, W) float32: per-pixel std across the ensemble, [0, 1] units
    entropy: np.ndarray           # (H, W) float32: binary entropy (bits) of `probability`
    samples: np.ndarray | None = field(default=None, repr=False)  # (N, H, W) bool when asked
    #                               ((N, K, H, W) for K > 1 classes)
    fusion: str = "mean"          # how `mask` was made: "mean", "staple", "mean+crf", and
    #                               "+largest" etc. when post-processed (postprocess.py)
    classes: tuple[str, ...] | None = None   # K > 1: the class names; None: one class
    nested: bool = True           # K > 1: how labels were made from regions (classes.py)
    zoom: dict | None = None      # crop="zoom" (zoom.py): {"box": [top, left, height, width]
    #                               the finest pass segmented, in original pixels, "input":
    #                               [h, w] of its crop}, with zoom_passes=3 also "pass2_box"
    #                               / "pass2_input", with zoom_outside="background" also
    #                               "outside"; {"box": None, "note": why} where pass 1 found
    #                               nothing to zoom on

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    def class_regions(self) -> np.ndarray:
        """(K, H, W) bool: each class's region (K = 1: the mask itself). Nested classes'
        regions include the inner ones (the disc includes the cup)."""
        if self.classes is None:
            return np.asarray(self.mask, dtype=bool)[None]
        from .classes import class_regions
        return class_regions(self.mask, len(self.classes), self.nested)


def check_fusion(fusion: str, refine: str | None) -> None:
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if refine not in REFINES:
        raise ValueError(f"refine must be None or 'crf', got {refine!r}")
    if refine == "crf" and fusion != "mean":
        raise ValueError("refine='crf' follows DiffSeg's protocol (CRF on the means of random "
                         "sample subsets) and replaces the fusion: use it with fusion='mean'")
    if refine == "crf":
        from .crf import _densecrf
        _densecrf()                      # fail before sampling if the extra is missing


def samples_to_result(samples: torch.Tensor, size_hw: tuple[int, int],
                      return_samples: bool = False, fusion: str = "mean",
                      refine: str | None = None, image: torch.Tensor | None = None,
                      rng: np.random.Generator | None = None) -> SegmentationResult:
    """(E, S, S) samples in mask space of one image -> result at the original (H, W).

    probability = clamp((mean of the raw samples + 1) / 2, 0, 1): thresholding it at 0.5 is
    the published rule "mean > 0" (samples are not clipped, as published).
    std = std over the ensemble of each sample mapped to [0, 1] and clipped there, so a
    wild sample cannot make the spread exceed what a binary disagreement gives (0.5).
    fusion="staple" makes the mask from STAPLE over the binary samples instead of the mean;
    "mean-squared" is the official MedSegDiff code's rule (which it calls staple): mean^2 > 0.5;
    refine="crf" refines with DenseCRF on `image` (3, H, W) (DiffSeg's protocol).
    """
    from .uncertainty import staple_fusion
    samples = samples.float()
    prob = ((samples.mean(dim=0) + 1) / 2).clamp(0, 1)
    fg = ((samples + 1) / 2).clamp(0, 1)
    std = fg.std(dim=0, unbiased=False)
    maps = torch.stack((prob, std))[None]                          # (1, 2, S, S)
    up = F.interpolate(maps, size=size_hw, mode="bilinear", align_corners=False)[0]
    probability = up[0].clamp_(0, 1).numpy()           # float32 views, no copies: a 64 MP
    #                                                    image's maps are 256 MB each
    mask = probability > 0.5
    need_samples = return_samples or fusion == "staple" or refine == "crf"
    fg_up = (F.interpolate(fg[None], size=size_hw, mode="bilinear", align_corners=False)[0]
             .numpy() if need_samples else None)                   # (E, H, W) in [0, 1]
    binary = fg_up > 0.5 if need_samples else None
    if fusion == "staple":
        mask = staple_fusion(binary)
    elif fusion == "mean-squared":
        # The official MedSegDiff code's ensemble rule (its `staple`): (pixel mean of the raw
        # samples in its {0, 1} space)^2, here thresholded at 0.5 (mean > 0.707).
        msq = (((samples + 1) / 2).mean(dim=0) ** 2)[None, None]
        mask = (F.interpolate(msq, size=size_hw, mode="bilinear", align_corners=False)[0, 0]
                > 0.5).numpy()
    if refine == "crf":
        from .crf import diffseg_refine
        from .images import to_uint8_rgb
        refined = diffseg_refine(to_uint8_rgb(image.numpy()), fg_up,
                                 rng or np.random.default_rng(0))
        mask = refined > 0.5
    res = SegmentationResult(mask=mask, probability=probability,
                             std=up[1].clamp_min_(0).numpy(),
                             entropy=entropy_f32(probability),
                             fusion=fusion + ("+crf" if refine == "crf" else ""))
    if return_samples:
        res.samples = binary
    return res


def entropy_f32(prob: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """uncertainty.entropy_map as float32, a million pixels at a time (its float64
    temporaries for a whole 64 MP map would take gigabytes)."""
    from .uncertainty import entropy_map
    out = np.empty(prob.shape, np.float32)
    src, dst = prob.reshape(-1), out.reshape(-1)
    for i in range(0, src.size, chunk):
        dst[i:i + chunk] = entropy_map(src[i:i + chunk])
    return out


def samples_to_class_result(samples: torch.Tensor, size_hw: tuple[int, int],
                            classes: tuple[str, ...], nested: bool = True,
                            return_samples: bool = False,
                            fusion: str = "mean") -> SegmentationResult:
    """(E, K, S, S) samples of one image, K = len(classes) > 1 -> result at (H, W).

    Each class's probability, std and entropy are computed as `samples_to_result` does for
    one class ((K, H, W) each); each class's region is its probability > 0.5 (or its STAPLE
    over the members' binary masks, or the mean-squared rule), and `mask` is the label map
    of the regions (classes.label_map: nested, the inner class wins; exclusive, the most
    probable). CRF refinement is DiffSeg's two-label protocol and is refused for K > 1
    (Segmenter.resolve), so it is not taken here.
    """
    from .classes import label_map
    from .uncertainty import staple_fusion
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    samples = samples.float()
    e, k = samples.shape[:2]
    if k != len(classes):
        raise ValueError(f"samples of {k} mask channels for {len(classes)} classes")
    fg = ((samples + 1) / 2).clamp(0, 1)                             # (E, K, S, S)
    prob = ((samples.mean(dim=0) + 1) / 2).clamp(0, 1)               # (K, S, S)
    std = fg.std(dim=0, unbiased=False)
    up = F.interpolate(torch.cat((prob, std))[None], size=size_hw, mode="bilinear",
                       align_corners=False)[0]
    probability = up[:k].clamp(0, 1).numpy().astype(np.float32)     # (K, H, W)
    std_up = up[k:].clamp_min(0).numpy().astype(np.float32)
    regions = probability > 0.5
    need_samples = return_samples or fusion == "staple"
    binary = None
    if need_samples:
        fg_up = F.interpolate(fg, size=size_hw, mode="bilinear", align_corners=False)
        binary = fg_up.numpy() > 0.5                                  # (E, K, H, W)
    if fusion == "staple":
        regions = np.stack([staple_fusion(binary[:, c]) for c in range(k)])
    elif fusion == "mean-squared":
        msq = ((samples + 1) / 2).mean(dim=0) ** 2                    # (K, S, S), unclipped
        regions = (F.interpolate(msq[None], size=size_hw, mode="bilinear",
                                 align_corners=False)[0] > 0.5).numpy()
    entropy = np.stack([entropy_f32(p) for p in probability])
    res = SegmentationResult(mask=label_map(regions, nested, probability),
                             probability=probability, std=std_up, entropy=entropy,
                             fusion=fusion, classes=tuple(classes), nested=nested)
    if return_samples:
        res.samples = binary
    return res
