"""DiffSegPipeline: two denoisers, N noise draws per image, masks at the original size.

    pipe = dsd_fast.families.diffseg.DiffSegPipeline.from_files("model_train8.pth",
                                                                "model_no8.pth")
    results = pipe.segment(["lesion.jpg"], ensemble=5)          # SegmentationResult each

Per call: images -> (3, H, W) in [0, 1] -> the models' input (S x S, in [-1, 1] for the
published models) -> for each of N draws per image, both models once at t = 0 (all images
and draws of a batch in one forward per model) -> the difference map and mask of each draw
(difference.py) -> the draws' masks as an ensemble: probability = fraction of draws that
mark a pixel, std across draws, mask = probability > 0.5 (or STAPLE, or a DenseCRF).

Where the mask covers the image (`crop`):
  "full" (default): the whole image is resized to S x S for the models and the maps are
      resized back to the original size, like the other families (aspect is not kept: a
      4:3 image is squeezed, which the models did not see in training);
  "center": the published transform, shorter side resized to S (aspect kept) and the
      central S x S crop segmented; outside the crop the result is background with zero
      spread. The official code stops at the crop.
There is no sampling loop: `steps`, `sampler`, `eta` and `clip_x0` are accepted for a
common signature and ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...diffusion import flush_denormals, noise_seed
from ...diffusion.tta import member_views, undo_member_views
from ...images import as_image_list, to_chw
from ...postprocess import postprocessed, resolve_postprocess
from ...precision import resolve_precision, with_precision
from ...preprocess import Preprocessing, content_key, to_model_input
from ...results import SegmentationResult, samples_to_result
from .difference import difference_map, mask_from_difference, residual, t0_coefficients

CROPS = ("full", "center")
REFINES = (None, "crf", "crf-published")


@dataclass(eq=False, repr=False)
class DiffSegPipeline:
    have: nn.Module            # trained on lesion images
    no: nn.Module              # fine-tuned towards lesion-free pictures
    crop: str = "full"

    def __post_init__(self):
        from . import DIFFSEG
        self.family = DIFFSEG
        if self.have.config != self.no.config:
            raise ValueError("the two DiffSeg networks differ in config: "
                             f"{self.have.config} vs {self.no.config}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, have_path, no_path, crop: str = "full", device="cpu",
                   **settings) -> "DiffSegPipeline":
        """The two official state-dict files (`model_train*.pth` = have, `model_no*.pth` =
        no); `settings` (num_heads, timesteps, input_range, groups) say what they cannot."""
        from ...checkpoint import load_model
        have = load_model(have_path, device=device, family="diffseg", **settings)
        no = load_model(no_path, device=device, family="diffseg", **settings)
        return cls(have, no, crop)

    @property
    def config(self):
        return self.have.config

    @property
    def model(self) -> nn.Module:
        return self.have

    @property
    def device(self) -> torch.device:
        return next(self.have.parameters()).device

    @property
    def preprocessing(self) -> Preprocessing:
        return self.family.preprocessing(self.config)

    def to(self, device) -> "DiffSegPipeline":
        self.have.to(device)
        self.no.to(device)
        return self

    def denoisers(self, backend: str = "auto",
                  precision: str = "fp32") -> tuple[nn.Module, nn.Module]:
        """The two networks the method runs (fast or reference) at `precision`."""
        if backend not in ("auto", "fast", "reference"):
            raise ValueError(f"backend must be 'auto', 'fast' or 'reference', got {backend!r}")
        precision = resolve_precision(precision, self.device)
        pair = (self.have, self.no)
        if backend == "fast" or (backend == "auto" and self._fast_ops()):
            pair = (self.family.fast_model_for(self.have), self.family.fast_model_for(self.no))
        return tuple(with_precision(net, precision) for net in pair)

    def _fast_ops(self) -> bool:
        from ... import ops
        return ops.fast_path_available(self.device)

    # ------------------------------------------------------------------ the method
    def check_args(self, steps=1, ensemble=1, sampler="ddim", fusion="mean", refine=None,
                   batch_size=1, seed=0, eta=0.0) -> None:
        from ...api import _is_int
        from ...diffusion.ensemble import MAX_SEED
        from ...results import check_fusion
        if refine not in REFINES:
            raise ValueError(f"refine must be one of {REFINES}, got {refine!r}")
        check_fusion(fusion, None if refine is None else "crf")
        for name, v in (("steps", steps), ("ensemble", ensemble), ("batch_size", batch_size)):
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")

    def model_input(self, chws: list[torch.Tensor]) -> torch.Tensor:
        """(3, H, W) in [0, 1] -> (N, 3, S, S) in the models' range (centre-cropped when
        crop="center")."""
        s = self.config.image_size
        if self.crop == "center":
            x = torch.stack([_center_crop(c, s) for c in chws])
        else:
            x = to_model_input(chws, self.preprocessing)
        x = x.to(self.device)
        return x * 2 - 1 if self.config.input_range == "-1..1" else x

    @torch.no_grad()
    def draw(self, x: torch.Tensor, ensemble: int, seed: int, noise_keys: list,
             backend: str = "auto", noises=None, precision: str = "fp32",
             tta: bool = False) -> dict:
        """(N, 3, S, S) model inputs -> per draw: mask (N, E, S, S) bool and difference map
        (N, E, S, S). Image i's draws come from its own generator (seed, noise_keys[i]):
        eps_have (E, 3, S, S) first, then eps_no; `noises` [(eps_have, eps_no)] per image
        replaces them (parity tests). tta: draw e sees the image under symmetry e mod 8
        and its difference map is turned back (diffusion/tta.py)."""
        n, c, h, w = x.shape
        if noises is None:
            noises = []
            for key in noise_keys:
                gen = torch.Generator().manual_seed(noise_seed(seed, key))
                noises.append((torch.randn(ensemble, c, h, w, generator=gen),
                               torch.randn(ensemble, c, h, w, generator=gen)))
        eps_have = torch.cat([e[0] for e in noises]).to(x)        # (N*E, 3, S, S)
        eps_no = torch.cat([e[1] for e in noises]).to(x)
        xs = member_views(x, ensemble) if tta else x.repeat_interleave(ensemble, dim=0)
        a, s = t0_coefficients(self.config.timesteps)
        have, no = self.denoisers(backend, precision)
        with flush_denormals():
            r_have = residual(have, xs, eps_have, a, s)
            r_no = residual(no, xs, eps_no, a, s)
        diff = difference_map(r_have.float().cpu(), r_no.float().cpu())
        if tta:
            diff = undo_member_views(diff, ensemble)
        return {"mask": mask_from_difference(diff).view(n, ensemble, h, w),
                "difference": diff.view(n, ensemble, h, w)}

    def segment(self, images, steps: int | None = None, ensemble: int | None = None,
                seed: int = 0, sampler: str = "ddim", eta: float = 0.0, batch_size: int = 4,
                fusion: str = "mean", refine: str | None = None, backend: str = "auto",
                return_samples: bool = False, progress: bool = False,
                noise_keys: list | None = None, clip_x0: bool = True,
                noises=None, precision: str = "fp32", spacing: str | None = None,
                tta: bool = False, postprocess: str | None = "auto") -> list[SegmentationResult]:
        """Segment skin lesions; arguments as `dsd_fast.segment` (steps, sampler, eta and
        clip_x0 do not apply and are ignored; there is no time grid, so only the default
        spacing is accepted). refine: None, "crf" (this project's DenseCRF on the draws'
        masks) or "crf-published" (the official protocol: crf.py). postprocess "auto" is
        none here (DiffSeg files carry no such setting)."""
        items = as_image_list(images)
        postprocess = resolve_postprocess(postprocess, None)
        if noise_keys is not None and len(noise_keys) != len(items):
            raise ValueError(f"noise_keys has {len(noise_keys)} entries for {len(items)} images")
        # None: not given (segment()'s convention); DiffSeg's own defaults
        steps = 1 if steps is None else steps
        ensemble = 5 if ensemble is None else ensemble
        spacing = "leading" if spacing is None else spacing
        self.check_args(steps, ensemble, sampler, fusion, refine, batch_size, seed, eta)
        if spacing != "leading":
            raise ValueError(f"DiffSeg runs its denoisers once at t = 0: there is no time "
                             f"grid to space, got spacing={spacing!r}")
        if not isinstance(tta, bool):
            raise ValueError(f"tta must be True or False, got {tta!r}")
        precision = resolve_precision(precision, self.device)
        chws = [to_chw(item, i) for i, item in enumerate(items)]
        keys = list(noise_keys) if noise_keys is not None else [content_key(c) for c in chws]
        results = []
        for start in range(0, len(chws), int(batch_size)):
            chunk, ck = chws[start:start + batch_size], keys[start:start + batch_size]
            cn = None if noises is None else noises[start:start + batch_size]
            out = self.draw(self.model_input(chunk), int(ensemble), int(seed), ck, backend, cn,
                            precision, tta)
            for k, chw in enumerate(chunk):
                samples = out["mask"][k].float() * 2 - 1                 # mask space [-1, 1]
                rng = np.random.default_rng(noise_seed(seed, ck[k]))
                results.append(postprocessed(
                    self._result(samples, chw, return_samples, fusion, refine, rng),
                    postprocess))
        return results

    __call__ = segment

    def _result(self, samples, chw, return_samples, fusion, refine, rng) -> SegmentationResult:
        h, w = chw.shape[1:]
        if self.crop == "full":
            if refine == "crf-published":
                return _published_crf_result(samples, chw, (h, w), return_samples, rng)
            return samples_to_result(samples, (h, w), return_samples, fusion,
                                     "crf" if refine == "crf" else None, chw, rng)
        top, left, bh, bw = _crop_box(h, w, self.config.image_size)
        inner = chw[:, top:top + bh, left:left + bw]
        if refine == "crf-published":
            res = _published_crf_result(samples, inner, (bh, bw), return_samples, rng)
        else:
            res = samples_to_result(samples, (bh, bw), return_samples, fusion,
                                    "crf" if refine == "crf" else None, inner, rng)
        return _paste(res, (h, w), top, left)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.have.parameters())
        return (f"DiffSegPipeline({n / 1e6:.2f} M parameters x 2, T={self.config.timesteps}, "
                f"crop={self.crop!r}, device={self.device})")


# ----------------------------------------------------------------------------- crops

def _resized_size(h: int, w: int, s: int) -> tuple[int, int]:
    """torchvision Resize(s): the shorter side to s, the longer one scaled and truncated."""
    if h <= w:
        return s, int(s * w / h)
    return int(s * h / w), s


def _center_crop(chw: torch.Tensor, s: int) -> torch.Tensor:
    """The published transform on a (3, H, W) image: shorter side to s, central s x s."""
    rh, rw = _resized_size(*chw.shape[1:], s)
    x = F.interpolate(chw[None], size=(rh, rw), mode="bilinear", align_corners=False,
                      antialias=True)[0]
    top, left = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))
    return x[:, top:top + s, left:left + s]


def _crop_box(h: int, w: int, s: int) -> tuple[int, int, int, int]:
    """The centre crop's (top, left, height, width) in original pixels."""
    rh, rw = _resized_size(h, w, s)
    top, left = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))
    sy, sx = h / rh, w / rw
    t0, l0 = int(math.floor(top * sy)), int(math.floor(left * sx))
    return t0, l0, max(1, min(h, int(round((top + s) * sy))) - t0), \
        max(1, min(w, int(round((left + s) * sx))) - l0)


def _paste(res: SegmentationResult, size, top, left) -> SegmentationResult:
    """A result for the crop box -> the same in the full frame, background outside."""
    h, w = size
    bh, bw = res.mask.shape

    def put(a, fill, dtype):
        full = np.full((*a.shape[:-2], h, w), fill, dtype=dtype)
        full[..., top:top + bh, left:left + bw] = a
        return full
    return SegmentationResult(
        mask=put(res.mask, False, bool), probability=put(res.probability, 0.0, np.float32),
        std=put(res.std, 0.0, np.float32), entropy=put(res.entropy, 0.0, np.float32),
        samples=None if res.samples is None else put(res.samples, False, bool),
        fusion=res.fusion)


def _published_crf_result(samples, chw, size, return_samples, rng) -> SegmentationResult:
    from ...crf import diffseg_published_crf
    from ...images import to_uint8_rgb
    res = samples_to_result(samples, size, return_samples=True)
    lesion = diffseg_published_crf(to_uint8_rgb(chw.numpy()), res.samples, rng)
    res.mask = lesion > 0.5
    res.fusion = "crf-published"
    if not return_samples:
        res.samples = None
    return res
