"""DiffSegPipeline: two denoisers, N noise draws per image, masks at the original size.

    from dsd_fast.families.diffseg.pipeline import DiffSegPipeline
    pipe = DiffSegPipeline.from_files("model_train8.pth", "model_no8.pth")
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
There is no sampling loop: `steps`, `sampler` and `spacing` are refused; `eta` and
`clip_x0` do not apply. The batched loop is the shared one (segmenter.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...diffusion import flush_denormals, noise_seed
from ...diffusion.tta import member_views, undo_member_views
from ...errors import CheckpointError
from ...model_files import read_file
from ...options import Choices, SegmentOptions
from ...precision import resolve_precision, with_precision
from ...preprocess import Preprocessing, to_model_input
from ...results import SegmentationResult, samples_to_result
from ...segmenter import Segmenter
from ...state_dict import check_state_dict
from .difference import difference_map, mask_from_difference, residual, t0_coefficients

@dataclass(eq=False, repr=False)
class DiffSegPipeline(Segmenter):
    have: nn.Module            # trained on lesion images
    no: nn.Module              # fine-tuned towards lesion-free pictures
    crop: str = "full"

    # The DiffSeg family (families/diffseg/__init__.py sets it when it imports this module,
    # so that this module imports nothing of its family package).
    family: ClassVar = None

    def __post_init__(self):
        if self.have.config != self.no.config:
            raise ValueError("the two DiffSeg networks differ in config: "
                             f"{self.have.config} vs {self.no.config}")
        crops = self.family.choices(self.config).crops   # its own: not every CROPS entry
        if self.crop not in crops:
            raise ValueError(f"crop must be one of {crops}, got {self.crop!r}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, have_path, no_path, crop: str = "full", device="cpu",
                   **settings) -> "DiffSegPipeline":
        """The two official state-dict files (`model_train*.pth` = have, `model_no*.pth` =
        no); `settings` (num_heads, timesteps, input_range, groups) say what they cannot."""
        have, no = (_network_from_file(cls.family, p, device, settings)
                    for p in (have_path, no_path))
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

    def networks(self) -> dict:
        return {"have": self.have, "no": self.no}

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

    # ------------------------------------------------------------------ the segmenter steps
    def choices(self) -> Choices:
        base = self.family.choices(self.config)
        return dataclasses.replace(base, crops=(self.crop, *(c for c in base.crops
                                                            if c != self.crop)))

    def view(self, chw: torch.Tensor, opts: SegmentOptions | None = None) -> torch.Tensor:
        """(3, H, W) in [0, 1] -> (3, S, S) in [0, 1]: the centre crop (crop="center") or the
        whole image resized (the call's crop, else the pipeline's own)."""
        crop = (opts.crop if opts is not None else None) or self.crop
        if crop == "center":
            return _center_crop(chw, self.config.image_size)
        return to_model_input([chw], self.preprocessing)[0]

    def model_input(self, chws: list[torch.Tensor], crop: str | None = None) -> torch.Tensor:
        """(3, H, W) in [0, 1] -> (N, 3, S, S) in the models' range."""
        opts = SegmentOptions(crop=crop) if crop else None
        x = torch.stack([self.view(c, opts) for c in chws]).to(self.device)
        return self._in_range(x)

    def _in_range(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1 if self.config.input_range == "-1..1" else x

    def draw(self, views: torch.Tensor, keys: list, opts: SegmentOptions) -> torch.Tensor:
        out = self.draw_masks(self._in_range(views), opts.ensemble, opts.seed, keys,
                              opts.backend, precision=opts.precision, tta=opts.tta)
        return out["mask"].float() * 2 - 1                          # mask space [-1, 1]

    @torch.no_grad()
    def draw_masks(self, x: torch.Tensor, ensemble: int, seed: int, noise_keys: list,
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

    def to_result(self, samples, size, image, opts, rng) -> SegmentationResult:
        h, w = size
        if opts.crop == "full":
            return _fused(samples, (h, w), image, opts, rng)
        top, left, bh, bw = _crop_box(h, w, self.config.image_size)
        inner = None if image is None else image[:, top:top + bh, left:left + bw]
        return _paste(_fused(samples, (bh, bw), inner, opts, rng), (h, w), top, left)

    # ------------------------------------------------------------------ files
    def file_contents(self) -> tuple[dict, dict]:
        """(tensors, metadata) of both networks as one own-format file (`have.*`, `no.*`)."""
        tensors = {f"{part}.{k}": v for part in ("have", "no")
                   for k, v in getattr(self, part).state_dict().items()}
        return tensors, {"family": self.family.name, "config": self.config.to_json(),
                         "crop": self.crop}

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.have.parameters())
        return (f"DiffSegPipeline({n / 1e6:.2f} M parameters x 2, T={self.config.timesteps}, "
                f"crop={self.crop!r}, device={self.device})")


def pair_from_file(tensors: dict, meta: dict, device="cpu") -> DiffSegPipeline:
    """An own-format DiffSeg file (both networks, keys `have.*` and `no.*`) -> its pipeline."""
    family = DiffSegPipeline.family
    try:
        config = family.config_class.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"the file's metadata is not valid: {e}") from None
    nets = []
    for part in ("have", "no"):
        sd = {k[len(part) + 1:]: v for k, v in tensors.items() if k.startswith(part + ".")}
        nets.append(_built(family, config, sd, device))
    return DiffSegPipeline(*nets, crop=meta.get("crop", "full"))


def _network_from_file(family, path, device, settings: dict) -> nn.Module:
    """One official state-dict file -> its U-Net (config from shapes and `settings`)."""
    obj, _ = read_file(path)
    sd = family.state_dict_from(obj) if isinstance(obj, dict) else None
    if sd is None or not family.recognises(sd):
        raise CheckpointError(f"{path}: not a {family.title} state dict (expected keys like "
                              f"{', '.join(repr(k) for k in family.signature_keys[:2])})")
    try:
        config = family.infer_config(sd, **settings)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return _built(family, config, sd, device)


def _built(family, config, state_dict: dict, device) -> nn.Module:
    net = family.build_reference(config)
    check_state_dict(net.state_dict(), state_dict)
    net.load_state_dict(state_dict, strict=True)
    return net.to(device).eval()


def _fused(samples, size, image, opts, rng) -> SegmentationResult:
    if opts.refine == "crf-published":
        return _published_crf_result(samples, image, size, opts.return_samples, rng)
    return samples_to_result(samples, size, opts.return_samples, opts.fusion, opts.refine,
                             image, rng)


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
