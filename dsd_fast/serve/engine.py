"""The worker side: segment a batch of requests' images, grouped by options, and encode.

Both the local batcher (batching.py) and the Ray Serve replicas (ray_serve.py) hand a list
of Jobs to `Engine.run`. Jobs with the same RequestOptions become ONE segment() call with
batch_size = their count, so their ensembles go through the network together; segment()
keys each image's initial noise by its pixels (preprocess.content_key), so a request's mask
is the one segment() gives that image alone. (The maps may differ from a lone call's in
the last float bits, ~1e-6: the network's kernels round differently at another batch size.)
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .limits import ApiError
from .options import RequestOptions
from .outputs import encode_result

log = logging.getLogger("dsd_fast.serve")


@dataclass(eq=False)        # compared by identity (its image is a tensor)
class Job:
    image: torch.Tensor              # (3, H, W) float32 in [0, 1] (limits.decode_image)
    options: RequestOptions
    maps: bool = True                # encode probability, uncertainty and overlay too
    submitted: float = field(default_factory=time.perf_counter)


class Engine:
    """{name: Pipeline} and the code that runs jobs on them; used from one thread."""

    def __init__(self, pipelines: dict, threads: int | None = None):
        self.pipelines = pipelines
        if threads is not None:
            torch.set_num_threads(threads)

    def warmup(self) -> None:
        """One tiny segmentation per model: builds each fast network (and its caches) now
        rather than in the first request."""
        tiny = torch.full((3, 32, 32), 0.5)
        for pipe in self.pipelines.values():
            pipe.segment([tiny], steps=1, ensemble=1, postprocess="none")

    def run(self, jobs: list[Job]) -> list:
        """Jobs -> one entry per job, in order: a payload dict (outputs.encode_result, plus
        batch and timing fields) or the ApiError that job gets."""
        out: list = [None] * len(jobs)
        groups: dict[RequestOptions, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.options, []).append(i)
        for opts, idx in groups.items():
            started = time.perf_counter()
            try:
                results = self.pipelines[opts.model].segment(
                    [jobs[i].image for i in idx], batch_size=len(idx), **opts.segment_kwargs())
            except ValueError as e:          # an option the model refuses (steps > T ...)
                for i in idx:
                    out[i] = ApiError(422, "bad_option", str(e))
                continue
            except Exception as e:           # a bug or resource failure: the job fails
                log.exception("segment() failed for a batch of %d", len(idx))
                for i in idx:
                    out[i] = ApiError(500, "internal_error",
                                      f"segmentation failed ({type(e).__name__}); see the "
                                      "server log")
                continue
            seg_ms = (time.perf_counter() - started) * 1e3
            for i, res in zip(idx, results):
                t0 = time.perf_counter()
                payload = encode_result(res, jobs[i].image, maps=jobs[i].maps)
                payload["options"] = opts.to_dict()
                payload["batch_images"] = len(idx)
                payload["timings_ms"] = {
                    "queue": (started - jobs[i].submitted) * 1e3, "segment": seg_ms,
                    "encode": (time.perf_counter() - t0) * 1e3}
                out[i] = payload
        return out


def mask_from_png(data: bytes) -> np.ndarray:
    """A mask PNG as the server sends it -> (H, W) bool (for clients and tests)."""
    import io

    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im) > 127
