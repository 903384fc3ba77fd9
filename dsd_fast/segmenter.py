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
mask clean-up, crop="zoom"'s passes (zoom.py). The command line calls `segment_views`
with views it decoded itself (large files are read reduced) and sources that read a file
again for the CRF's picture and the zoom's crops (image_sources.py), so the API and the
command line run the same code from the view on.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .diffusion import noise_seed
from .channels import ChannelNote, model_image
from .image_sources import crf_picture, zoom_crop
from .images import as_image_list
from .options import Choices, SegmentOptions, resolve
from .postprocess import postprocessed
from .preprocess import content_key
from .classes import default_classes
from .results import SegmentationResult, samples_to_class_result, samples_to_result
from .zoom import (ZOOM_PASS1, Box, candidate_boxes, clear_outside, crop_limit, drawn_entropy,
                   paste, refined_box, zoom_box)


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
        (3, H, W) uint8 picture a CRF refines on (image_sources.crf_picture: the image as
        a viewer sees it, whatever its channel count), None without a CRF. Default:
        resize the view's maps back.
        A model of K > 1 classes gives (E, K, S, S) samples and a label-map result."""
        if self.mask_channels > 1:
            return samples_to_class_result(samples, size, self.classes, self.nested,
                                           opts.return_samples, opts.fusion)
        # (H, W, 3), the CRF's layout: read as (3, H, W), a picture 3 pixels wide was not
        picture = None if image is None else image.permute(1, 2, 0)
        return samples_to_result(samples, size, opts.return_samples, opts.fusion,
                                 opts.refine, picture, rng)

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
        noise `keys`, resolved `opts`; `images` where a CRF needs the picture and where
        crop="zoom" crops it (`_zoomed`; required then): each a (C, H, W) tensor in [0, 1]
        or a source that reads its image again (image_sources.py). An image whose source
        can no longer be read gives None in its place (its source says why); images in
        memory never do."""
        if opts.crop == "zoom" and images is None:
            raise ValueError("crop='zoom' crops each image's box from its picture: "
                             "segment_views needs images= (each (C, H, W) in [0, 1])")
        results: list[SegmentationResult | None] = []
        bar = _progress_bar(len(views), progress)
        n = opts.batch_size
        clean_up = None if opts.postprocess == "none" else opts.postprocess
        run = self._zoomed if opts.crop == "zoom" else self._segmented
        for start in range(0, len(views), n):
            end = start + n
            chunk = run(views[start:end], sizes[start:end], keys[start:end], opts,
                        None if images is None else images[start:end])
            results += [None if r is None else postprocessed(r, clean_up) for r in chunk]
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return results

    def _segmented(self, views: list[torch.Tensor], sizes: list[tuple[int, int]], keys: list,
                   opts: SegmentOptions, images: list | None,
                   boxes: list | None = None) -> list[SegmentationResult | None]:
        """One network batch: `views` drawn together, each image's result at its size (not
        cleaned up yet). A CRF refines on each image's picture (of its box in `boxes`,
        where given and not None: a finer pass of crop="zoom"), read one image at a time;
        None for an image whose source can no longer be read."""
        return list(self._each_result(views, sizes, keys, opts, images, boxes))

    def _each_result(self, views, sizes, keys, opts, images, boxes=None):
        """`_segmented`'s results one at a time as they are made (a caller that pastes or
        writes each one holds one image's full-size maps, not the batch's)."""
        x = torch.stack(views).to(self.device)
        samples = self.draw(x, keys, opts).cpu()
        del x
        for k, key in enumerate(keys):
            rng = np.random.default_rng(noise_seed(opts.seed, key))   # the CRF's draws
            picture = None
            if opts.refine is not None and images is not None:
                picture = crf_picture(images[k], None if boxes is None else boxes[k])
                if picture is None:
                    yield None
                    continue
            yield self.to_result(samples[k], sizes[k], picture, opts, rng)

    # ------------------------------------------------------------------ crop="zoom"
    def zoom_pass1(self, opts: SegmentOptions) -> SegmentOptions:
        """Pass 1's options under crop="zoom" (zoom.py): at most ZOOM_PASS1's 5 members;
        the call's sampler, steps and spacing where it takes at most 5 steps (and tries one
        box), else 5 DDIM steps on the trailing grid (leading for a family that walks its
        own grid); no CRF (pass 1 only finds the box) and no samples kept (outside the
        boxes every member carries pass 1's mask, zoom.paste)."""
        c, p = self.choices(), ZOOM_PASS1
        changes = {"refine": None, "ensemble": min(opts.ensemble, p["ensemble"]),
                   "return_samples": False}
        # zoom_boxes > 1 reads pass 1's confidence levels (candidate_boxes), which fewer
        # steps make sharp where they are wrong (on fundus photos 3 steps drew half the
        # photo as the disc at full confidence, 5 drew the disc as its surest part), so it
        # always runs ZOOM_PASS1's steps
        cheap = opts.sampler in c.steps_apply and opts.steps <= p["steps"] \
            and (opts.zoom_boxes or 1) == 1
        if c.samplers and not cheap:
            sampler = p["sampler"] if p["sampler"] in c.samplers else opts.sampler
            trailing = sampler == "ddim" and p["spacing"] in c.spacings
            changes.update(sampler=sampler, steps=min(p["steps"], c.T),
                           spacing=p["spacing"] if trailing else "leading")
        return opts.replace(**changes)

    def _zoomed(self, views: list[torch.Tensor], sizes: list[tuple[int, int]], keys: list,
                opts: SegmentOptions, images: list) -> list[SegmentationResult | None]:
        """crop="zoom" on one chunk (zoom.py): pass 1 on the whole views at `zoom_pass1`'s
        setting; each image's box A around pass 1's foreground; pass 2 at `opts` on the
        crops of A, pasted into pass 1. With opts.zoom_passes 3: box B around pass 2's
        foreground inside A (`refined_box`); pass 3 at `opts` on the crops of B, pasted over
        that; where pass 2 found nothing inside A, or B is A, pass 2's result stands (a
        note says which). Each finer pass runs all its crops in one batch, its noise keyed
        by `zoom_key` of the image's key (an image's result does not depend on the others);
        crops are cut from `images` one image at a time (a source decodes only then),
        reduced to `crop_limit` pixels, and each result is pasted as it is made (one
        image's crop-sized maps at a time on top of pass 1's maps of the chunk). Where pass
        1 found nothing, pass 2 runs on the image's whole view with its own key: the result
        is crop="full"'s (the call's members, its CRF), with a note in `zoom`. With
        opts.zoom_outside "background", everything outside the finest box (B where pass 3
        ran, else A) is background (`clear_outside`); a whole-image pass is left as it is.
        With opts.zoom_boxes N > 1, pass 2 runs on up to N candidate boxes around pass
        1's objects (`candidate_boxes`) and box A is the one whose pass-2 maps are surest
        (`_surest_boxes`); the record then lists them all as "boxes_tried".
        The `zoom` record of 2 passes is paste's {"box", "input"}; of 3 it adds pass 2's
        box as "pass2_box" / "pass2_input" (the finest box's where no third pass ran)."""
        coarse_opts = self.zoom_pass1(opts)
        coarse = self._segmented(views, sizes, keys, coarse_opts, None)
        side = views[0].shape[-1]               # the model's input: no box smaller than it
        if (opts.zoom_boxes or 1) > 1:
            tries = [candidate_boxes(r.class_regions(), r.probability, opts.zoom_boxes,
                                     min_side=side) for r in coarse]
        else:
            box_a = [zoom_box(r.class_regions(), min_side=side) for r in coarse]
            tries = [[] if b is None else [b] for b in box_a]
        boxes = [t[0] if t else None for t in tries]
        # pass 2: the crops of the boxes A, and the whole view where pass 1 found nothing
        whole = {i: views[i] for i, box in enumerate(boxes) if box is None}
        for i in whole:
            coarse[i] = None                    # (pass 1's maps are not needed)
        out: list[SegmentationResult | None] = [None] * len(views)
        finer: list[Box | None] = [None] * len(views)
        kept: dict[int, Box | None] = {}
        for i, res, seen in self._surest_boxes(tries, whole, side, sizes, keys, opts, images,
                                               kept):
            if res is None:                     # a source that can no longer be read
                coarse[i] = None
                continue
            if boxes[i] is None:
                res.zoom = {"box": None, "note": (
                    f"pass 1 ({coarse_opts.ensemble} members x {coarse_opts.steps} steps) "
                    "found no foreground: nothing to zoom on, the whole image was segmented "
                    "at the call's setting (as crop='full')")}
                out[i] = res
                continue
            boxes[i] = kept[i]
            out[i] = paste(coarse[i], res, boxes[i], seen)
            coarse[i] = None                    # given up to the pasted result
            if len(tries[i]) > 1:
                out[i].zoom["boxes_tried"] = [b.as_list() for b in tries[i]]
            if opts.zoom_passes == 3:
                finer[i] = _third_box(out[i], res, boxes[i], sizes[i], side)
        # pass 3: the crops of the boxes B, pasted over pass 2's results
        for i, res, seen in self._boxed_pass(finer, {}, side, sizes, keys, opts, images, 3):
            out[i] = None if res is None else paste(out[i], res, finer[i], seen)
        if opts.zoom_outside == "background":
            for i, res in enumerate(out):
                if res is not None and boxes[i] is not None:
                    clear_outside(res, finer[i] or boxes[i])
        return out

    def _surest_boxes(self, tries: list[list[Box]], whole: dict, side: int, sizes: list,
                      keys: list, opts: SegmentOptions, images: list, kept: dict):
        """Pass 2 over each image's candidate boxes (`tries[i]`, from zoom_box or
        candidate_boxes; [] where pass 1 found nothing: its whole view in `whole`), one
        network batch per rank of candidate. The first candidate's noise is the image's
        pass-2 key (`zoom_key`), so one candidate is exactly zoom_boxes=1's pass 2; the
        k-th's is keyed apart ("#box{k}"). Yields (i, the kept candidate's result, its
        crop's (h, w)) and sets kept[i] to the kept box (None for a whole view): the
        candidate whose result is surest (`drawn_entropy`, lowest; ties: the earlier).
        With one candidate each, results come as they are made (one image's crop-sized
        maps at a time); with more, after the last rank. An image whose source can no
        longer be read yields (i, None, None) and tries no more boxes."""
        ranks = max((len(t) for t in tries), default=0) or 1
        best: dict[int, tuple[float, SegmentationResult, tuple | None]] = {}
        lost: set[int] = set()
        for rank in range(ranks):
            ranked = [t[rank] if rank < len(t) and i not in lost else None
                      for i, t in enumerate(tries)]
            rank_keys = keys if rank == 0 else [f"{k}#box{rank}" for k in keys]
            passed = self._boxed_pass(ranked, whole if rank == 0 else {}, side, sizes,
                                      rank_keys, opts, images, 2)
            for i, res, seen in passed:
                if res is None:
                    lost.add(i)
                    best.pop(i, None)
                    yield i, None, None
                    continue
                if ranks == 1:
                    kept[i] = ranked[i]
                    yield i, res, seen
                    continue
                score = drawn_entropy(res) if len(tries[i]) > 1 else 0.0
                if i not in best or score < best[i][0]:
                    best[i] = (score, res, seen)
                    kept[i] = ranked[i]
        for i in sorted(best):
            yield i, best[i][1], best[i][2]

    def _boxed_pass(self, boxes: list, whole: dict, side: int, sizes: list, keys: list,
                    opts: SegmentOptions, images: list, number: int):
        """Pass `number` (2 or 3) of crop="zoom" at `opts`, in one network batch: the crop
        of each image's box in `boxes` (None: not in this pass) cut from `images` one
        image at a time and reduced to `crop_limit(side)` pixels (`side`: the model's
        input), its noise keyed by `zoom_key`; and the views in `whole` ({i: the (C, S, S)
        view of the whole image}, for images whose box is None) with their own keys.
        Yields (i, its result at the box's size (the image's for a whole view), the crop's
        (h, w)) as each is made; the result is None for an image whose source can no
        longer be read (for its crop or its CRF picture)."""
        todo, pass_views, pass_sizes, pass_keys, pass_boxes, seen = [], [], [], [], [], {}
        for i, box in enumerate(boxes):
            if i in whole:
                pass_views.append(whole[i])
                pass_sizes.append(sizes[i])
                pass_keys.append(keys[i])
            elif box is not None:
                crop = zoom_crop(images[i], sizes[i], box, crop_limit(side))
                if crop is None:
                    yield i, None, None
                    continue
                seen[i] = tuple(crop.shape[-2:])
                pass_views.append(self.view(crop, opts))
                pass_sizes.append((box.height, box.width))
                pass_keys.append(zoom_key(keys[i], number))
            else:
                continue
            todo.append(i)
            pass_boxes.append(box)
        if todo:               # pasted by the caller as each is made: one image at a time
            made = self._each_result(pass_views, pass_sizes, pass_keys, opts,
                                     [images[i] for i in todo], pass_boxes)
            for i, res in zip(todo, made):
                yield i, res, seen.get(i)


def _third_box(pasted: SegmentationResult, res: SegmentationResult, box: Box,
               size: tuple[int, int], side: int) -> Box | None:
    """Pass 3's box B for one image (zoom_passes=3), or None where pass 2's result stands:
    `res` is pass 2's result at box A's size (`box`), so its regions are what it found
    inside A. Records A in `pasted`'s zoom as "pass2_box" / "pass2_input", and a note
    where no third pass runs (pass 2 found nothing inside A, or B is A)."""
    record = pasted.zoom
    record.update(pass2_box=list(record["box"]), pass2_input=list(record["input"]))
    finer = refined_box(res.class_regions(), box, size, min_side=side)
    if finer is None or finer == box:
        why = ("pass 2 found no foreground inside its box" if finer is None
               else "the box around pass 2's result is its own box")
        record["note"] = why + ": pass 2's result stands (no third pass)"
        return None
    return finer


def zoom_key(key, number: int = 2) -> str:
    """The noise key of pass `number` (2 or 3) under crop="zoom": the image's own key (a
    name, a content digest, an int) with "#zoom" (pass 2) or "#zoom2" (pass 3) appended,
    so each pass draws other chains than the passes before it, per image."""
    if number not in (2, 3):
        raise ValueError(f"crop='zoom' has passes 2 and 3 after the first, got {number}")
    return f"{key}#zoom" if number == 2 else f"{key}#zoom2"


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", desc="segment")
