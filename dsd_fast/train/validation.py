"""Validation during training: the mean per-image Dice of a network on held samples at a
validation setting (DDIM steps x ensemble members on a spacing grid, the whole image or
segment(crop="zoom")'s passes). The Trainer (loop.py) selects best.safetensors by it.

Image i's noise is keyed by its index in the samples (passes 2 and 3 of zoom: "i#zoom" and
"i#zoom2", as segmenter.zoom_key), so figures compare across runs and steps.
"""
from __future__ import annotations

import torch

from ..channels import to_model_channels
from ..classes import truth_regions
from ..diffusion import Schedule
from ..metrics import dice
from ..preprocess import minmax_normalise
from ..results import samples_to_class_result, samples_to_result


@torch.no_grad()
def validate(model, samples, steps: int, ensemble: int, seed: int = 0,
             batch_images: int = 10, schedule: Schedule | None = None,
             spacing: str = "leading", crop: str = "full") -> float:
    """Mean per-image Dice (clipped DDIM with the family's conventions, ensemble mean > 0;
    see `validate_classes` for where it is scored). A model of several classes: the mean
    over classes of each class's mean Dice."""
    per_class = validate_classes(model, samples, steps, ensemble, seed, batch_images,
                                 schedule, spacing=spacing, crop=crop)
    return sum(per_class.values()) / len(per_class)


@torch.no_grad()
def validate_classes(model, samples, steps: int, ensemble: int, seed: int = 0,
                     batch_images: int = 10, schedule: Schedule | None = None,
                     classes=None, nested: bool = True, spacing: str = "leading",
                     crop: str = "full") -> dict[str, float]:
    """{class name: mean per-image Dice}; one class: {"lesion": Dice}. Several: each class's
    region of the label map (classes.py: nested, the disc includes the cup) against that
    class's ground-truth mask.

    crop "full": each sample's held image (data.Sample.image, (C, S, S) at model size) is
    the model's view; the masks are scored at each image's original size.
    crop "zoom": `_zoomed_results`, scored at the held resolution (see there)."""
    from ..api import pipeline_from_network
    model.eval()
    pipe = pipeline_from_network(model, schedule)
    names = tuple(classes) if classes else pipe.classes
    several = pipe.mask_channels > 1
    dices = {n: [] for n in names}
    if crop == "zoom":
        scored = ((res, s.mask.numpy() > 0.5) for s, res in
                  _zoomed_results(pipe, samples, steps, ensemble, spacing, seed,
                                  batch_images))
    elif crop == "full":
        scored = (((samples_to_class_result(smp, s.original_size, names, nested) if several
                    else samples_to_result(smp, s.original_size)),
                   s.original_mask.numpy())
                  for s, smp in _sampled(pipe, samples, steps, ensemble, seed, batch_images,
                                         spacing))
    else:
        raise ValueError(f"crop must be 'full' or 'zoom', got {crop!r}")
    for res, truth in scored:
        if several:
            # the ground truth's regions under the same rule as the prediction's
            regions, truth = res.class_regions(), truth_regions(truth, nested)
            for c, name in enumerate(names):
                dices[name].append(dice(regions[c], truth[c]))
        else:
            dices[names[0]].append(dice(res.mask, truth.reshape(truth.shape[-2:])))
    return {n: sum(d) / len(d) for n, d in dices.items()}


def _sampled(pipe, samples, steps: int, ensemble: int, seed: int, batch_images: int,
             spacing: str = "leading"):
    """(sample, its ensemble's samples) of each validation sample, `batch_images` at a time:
    the model's channels and normalisation as inference makes them, the reference network,
    image i's noise keyed by its index."""
    for start in range(0, len(samples), batch_images):
        chunk = samples[start:start + batch_images]
        inp = to_model_channels(torch.stack([s.image for s in chunk]), pipe.channels)
        if pipe.preprocessing.normalise == "minmax":
            inp = minmax_normalise(inp)
        out = pipe.sample(inp.to(pipe.device), steps, ensemble, seed,
                          list(range(start, start + len(chunk))), backend="reference",
                          spacing=spacing).cpu()
        yield from zip(chunk, out)


def _zoomed_results(pipe, samples, steps: int, ensemble: int, spacing: str, seed: int,
                    batch_images: int):
    """(sample, its crop="zoom" result) of each validation sample: the segmenter's own
    passes (segmenter.py `_zoomed`: pass 1 at zoom.ZOOM_PASS1 finds the box, pass 2 at
    this setting on the box's crop, pass 3 on the box around pass 2's result, pasted),
    the reference network, no clean-up, fusion
    "mean". What differs from segment(crop="zoom") on the original file: the picture is the
    sample's held image (data.Sample.image, the whole image resized to a square of the
    hold size, ROI_HOLD x the model's input when validating with zoom; aspect not kept), so
    passes 2 and 3 crop from that resolution, not the file's; and the result, at the held size, is
    scored against the held mask (nearest-resized), not at the original size."""
    opts = pipe.resolve(steps=steps, ensemble=ensemble, spacing=spacing, sampler="ddim",
                        seed=seed, crop="zoom", backend="reference", postprocess="none",
                        fusion="mean", batch_size=batch_images)
    for start in range(0, len(samples), batch_images):
        chunk = samples[start:start + batch_images]
        pictures = list(to_model_channels(torch.stack([s.image for s in chunk]),
                                          pipe.channels))
        results = pipe.segment_views([pipe.view(p, opts) for p in pictures],
                                     [tuple(p.shape[-2:]) for p in pictures],
                                     list(range(start, start + len(chunk))), opts,
                                     images=pictures)
        yield from zip(chunk, results)
