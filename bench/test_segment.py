"""segment() per image, end to end: decode, preprocess, the sampler's loop over the fast model
(backend "auto"), fusion and the mask at the original size. One PH2 image from the package's
samples; each family at the setting throughput_cases.py gives it (the bundled models: their
own defaults).
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from throughput_cases import SAMPLE_IMAGE, SEGMENT_ROUNDS, label


def test_segment(benchmark, case):
    image = np.asarray(Image.open(SAMPLE_IMAGE).convert("RGB"))
    label(benchmark, case, "segment() per image")
    # the setting the call runs (the model file's own where the case gives none)
    opts = case.pipeline.resolve(**case.segment_kwargs)
    benchmark.extra_info.update(image=SAMPLE_IMAGE.name, steps=opts.steps,
                                ensemble=opts.ensemble, spacing=opts.spacing)
    (result,) = benchmark.pedantic(lambda: case.pipeline.segment(image, **case.segment_kwargs),
                                   rounds=SEGMENT_ROUNDS, warmup_rounds=1)
    mask = np.asarray(result.mask)
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    if case.weights == "bundled":
        # trained weights on a lesion image: some lesion, not all of it
        assert 0.01 < mask.mean() < 0.99
