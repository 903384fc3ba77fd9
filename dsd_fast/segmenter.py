"""The segmenter protocol: what every model family's pipeline is, and the one batched loop.

A segmenter turns images into SegmentationResults. Each family builds its own
(`ModelFamily.segmenter`): mask-diffusion families a `Pipeline` (pipeline.py), DiffSeg a
`DiffSegPipeline`. They differ only in three steps, which they implement:

    choices()                 what the model accepts (options.Choices)
    view(chw)                 one (C, H, W) image in [0, 1] -> the model's (C, S, S) view
    draw(views, keys, opts)   (N, C, S, S) views -> (N, E, S, S) samples in [-1, 1]
                              ((N, E, K, S, S) for a model of K > 1 classes)
    to_result(samples, ...)   one image's samples -> a result at its original size

and share everything else here: options resolved once, images decoded and checked before any
work, per-image noise keys, batches of `batch_size` images, CRF draws keyed per image, the
mask clean-up. The command line calls `segment_views` with views it decoded itself (large
files are read reduced), so the API and the command line run the same code from the view on.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .diffusion import noise_seed
from .channels import ChannelNote, model_image
from .images import as_image_list
from .options import Choices, SegmentOptions, resolve
from .postprocess import postprocessed
from .preprocess import content_key
from .classes import default_classes
from .results import SegmentationResult, samples_to_class_result, samples_to_result


class SegmentNote(UserWarning):
    """A default that had to give way to the model (e.g. default steps above its T)."""


class Segmenter:
    """Base of every family's pipeline; subclasses hold `family` (its ModelFamily) and
    `device`, and implement the steps."""

    # ------------------------------------------------------------------ the family's steps
    def choices(self) -> Choices:
        raise NotImplementedError

    def view(self, chw: torch.Tensor, opts: SegmentOptions | None = None) -> torch.Tensor:
        """(C, H, W) in [0, 1] -> the (C, S, S) tensor the model sees under resolved `opts`
        (None: the segmenter's own settings)."""
        raise NotImplementedError

    def draw(self, views: torch.Tensor, keys: list, opts: SegmentOptions) -> torch.Tensor:
        """(N, C, S, S) views -> (N, E, S, S) samples in mask space [-1, 1]."""
        raise NotImplementedError

    def to_result(self, samples: torch.Tensor, size: tuple[int, int],
                  image: torch.Tensor | None, opts: SegmentOptions,
                  rng: np.random.Generator) -> SegmentationResult:
        """(E, S, S) samples of one image -> its result at `size` (H, W). `image` is the
        (C, H, W) picture where a CRF needs it. Default: resize the view's maps back.
        A model of K > 1 classes gives (E, K, S, S) samples and a label-map result."""
        if self.mask_channels > 1:
            return samples_to_class_result(samples, size, self.classes, self.nested,
                                           opts.return_samples, opts.fusion)
        return samples_to_result(samples, size, opts.return_samples, opts.fusion,
                                 opts.refine, image, rng)

    def networks(self) -> dict:
        """Its networks by name ({"model": net}; a DiffSeg pair: {"have": .., "no": ..})."""
        return {"model": self.model}

    # ------------------------------------------------------------------ options
    def resolve(self, options: SegmentOptions | None = None, **changes) -> SegmentOptions:
        """Options with the model's defaults filled in and checked against what it accepts
        (once per call; the loop below takes them as they are)."""
        opts = resolve(SegmentOptions.of(options, **changes), self.choices(),
                       note=lambda text: warnings.warn(text, SegmentNote, stacklevel=4))
        if opts.refine is not None and self.mask_channels > 1:
            raise ValueError(f"refine={opts.refine!r} is not available for a model of "
                             f"{self.mask_channels} classes: the DenseCRF here is DiffSeg's "
                             "two-label (lesion / background) protocol; use refine=None")
        if opts.refine is not None:
            from .crf import _densecrf
            _densecrf()                  # fail before sampling if the [crf] extra is missing
        return opts

    # ------------------------------------------------------------------ segmentation
    def segment(self, images, options: SegmentOptions | None = None, *,
                noise_keys: list | None = None, progress: bool = False,
                **changes) -> list[SegmentationResult]:
        """Segment `images` (see `dsd_fast.segment`); `options` and keyword changes are
        SegmentOptions fields. Every image is decoded and checked before any sampling."""
        items = as_image_list(images)
        opts = self.resolve(options, **changes)
        if noise_keys is not None and len(noise_keys) != len(items):
            raise ValueError(f"noise_keys has {len(noise_keys)} entries for {len(items)} images")
        chws = self.read_images(items)
        keys = list(noise_keys) if noise_keys is not None else [content_key(c) for c in chws]
        return self.segment_views([self.view(c, opts) for c in chws],
                                  [tuple(c.shape[1:]) for c in chws], keys, opts,
                                  images=chws, progress=progress)

    __call__ = segment

    @property
    def mask_channels(self) -> int:
        """How many classes (mask channels) its network segments (the family reads it from
        the config): 1 for today's binary masks."""
        return self.family.mask_channels(self.config)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names (classes.py): the file's metadata "classes", else ("lesion",) for
        one mask channel and ("class1", ..., "classK") for K. Label k of a K > 1 result's
        mask is classes[k - 1]."""
        names = getattr(self, "class_names", None)
        return tuple(names) if names else default_classes(self.mask_channels)

    @property
    def nested(self) -> bool:
        """Whether its classes are nested (the inner one wins in the label map; classes.py):
        the file's "classes_nested", else True."""
        nested = getattr(self, "nested_classes", None)
        return True if nested is None else bool(nested)

    @property
    def channels(self) -> int:
        """The channel count its images have (the family reads it from the config)."""
        return self.family.image_channels(self.config)

    def read_images(self, items: list) -> list[torch.Tensor]:
        """Each image as a (channels, H, W) tensor in [0, 1] (channels.py), all checked
        before any work; conversions (grayscale replicated, RGB to luma, alpha dropped)
        are announced once per call."""
        chws, notes = [], {}
        for i, item in enumerate(items):
            chw, note = model_image(item, i, self.channels)
            chws.append(chw)
            if note:
                notes[note] = notes.get(note, 0) + 1
        for note, n in notes.items():
            warnings.warn(f"{note} for {n} image{'s' if n > 1 else ''} (the model takes "
                          f"{self.channels}-channel images)", ChannelNote, stacklevel=3)
        return chws

    def segment_views(self, views: list[torch.Tensor], sizes: list[tuple[int, int]],
                      keys: list, opts: SegmentOptions, images: list | None = None,
                      progress: bool = False) -> list[SegmentationResult]:
        """The one batched loop: `views` (each (C, S, S), from `view`) of images of `sizes`,
        noise `keys`, resolved `opts`; `images` (C, H, W) where a CRF needs the picture."""
        results: list[SegmentationResult] = []
        bar = _progress_bar(len(views), progress)
        n = opts.batch_size
        clean_up = None if opts.postprocess == "none" else opts.postprocess
        for start in range(0, len(views), n):
            chunk_keys = keys[start:start + n]
            x = torch.stack(views[start:start + n]).to(self.device)
            samples = self.draw(x, chunk_keys, opts).cpu()
            for k, key in enumerate(chunk_keys):
                i = start + k
                rng = np.random.default_rng(noise_seed(opts.seed, key))   # the CRF's draws
                image = images[i] if images is not None else None
                results.append(postprocessed(
                    self.to_result(samples[k], sizes[i], image, opts, rng), clean_up))
            if bar is not None:
                bar.update(len(chunk_keys))
        if bar is not None:
            bar.close()
        return results


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", desc="segment")
