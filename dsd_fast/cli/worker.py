"""The work of `dsd-fast segment` that the local run and each Ray worker share: the run's
options (BatchOptions), what it learns as it goes (RunState), and the loop that decodes,
segments and writes a queue of images into that state (`process`).

    run.py       the local driver: discovery, the folder lock, resume, summaries, exit codes
    run_ray.py   the Ray driver and its tasks, which call `process` on their batches
    worker.py    this file; it imports neither driver, so the two import it and not each
                 other

One image's failure (unreadable, another channel count than the model's, out of memory)
is recorded in the state and the queue goes on; a write error that every later image would
meet too (disk full, read-only folder) is raised (OutputError) for the driver to stop on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..images import ImageInputError
from ..io import WHOLE_FOLDER_ERRNOS
from ..metrics import summarise
from ..options import SegmentOptions
from .discover import InputImage, prepare
from .errors import OutputError, UsageError
from .evaluate import GroundTruth
from .memory import auto_batch_size
from .class_outputs import class_kinds
from .outputs import write_outputs
from .volume_inputs import is_volume_input, segment_volume_input

DEFAULT_MAX_PIXELS = 16_000_000
VOLUME_AXES = (0, 1, 2)


@dataclass
class BatchOptions:
    """A `dsd-fast segment` run's options (its flags; segment_files' keywords), checked when
    made (UsageError names the flag)."""
    output: Path
    checkpoint: str | None = None
    # None: as segment() (options.resolve): none of steps / ensemble / spacing given ->
    # the model's own sampler defaults; else 25 / 5 / leading for those not given.
    # Resolved before the run starts (resolve_run_sampling), so records hold numbers.
    steps: int | None = None
    ensemble: int | None = None
    seed: int = 0
    # Images per network batch. 1 (the default) runs each image's ensemble as its own
    # batch, so an image's maps do not depend on what else is in the run, its order, the
    # number of Ray workers or a resume (oneDNN rounds differently at other batch sizes);
    # more (or "auto": as many as fit in memory) is faster on GPUs, ~10% on CPUs.
    batch_size: int | str | None = None
    threads: int | None = None             # torch intra-op threads; None: torch's default
    recursive: bool = False
    overwrite: bool = False
    allow_inplace: bool = False
    fail_fast: bool = False
    gt: str | None = None
    overlay: bool = True
    maps: bool = True                      # probability PNG + uncertainty heatmap
    report: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS   # above this, the model input is a reduced decode
    quiet: bool = False
    clip_x0: bool = True                   # DDIM x0 clipping, as segment()'s default
    precision: str = "fp32"                # or "bf16" (precision.py)
    spacing: str | None = None             # DDIM's time grid: "leading" or "trailing"
    tta: bool = False                      # members see flipped/rotated views (segment())
    # the mask's clean-up (postprocess.py): "auto" = the model file's own setting, resolved
    # with the sampling defaults before the run (resolve_run_sampling), so records hold it
    postprocess: str | None = "auto"
    # the family's options (options.py; None: the model's own): "ddim" | "ddpm" | "dpmpp";
    # "mean" | "staple" | "mean-squared"; None | "crf" | "crf-published"; "full" | "center"
    sampler: str | None = None
    fusion: str = "mean"
    refine: str | None = None
    crop: str | None = None
    # with crop "zoom": "pass1" | "background" outside the finest box (options.ZOOM_OUTSIDE);
    # None: the model file's own, resolved before the run (resolve_run_sampling)
    zoom_outside: str | None = None
    # with crop "zoom": 2 or 3 passes (options.ZOOM_PASSES); None: the model file's own,
    # resolved before the run (resolve_run_sampling)
    zoom_passes: int | None = None
    # with crop "zoom": 1..4 candidate boxes for pass 2 (options.ZOOM_BOXES); None: the
    # model file's own, resolved before the run (resolve_run_sampling)
    zoom_boxes: int | None = None
    # what a checkpoint of the original code does not say (checkpoint.load_parts), e.g.
    # {"objective": "pred_x0", "timesteps": 500} for a bare MedSegDiff Unet state dict
    model_settings: dict = field(default_factory=dict)
    # Ray: None runs here; "local" starts (or joins) a Ray instance on this machine; else the
    # address of a running cluster ("auto", "ray://host:10001"). `workers` tasks of
    # `threads` torch threads each (default: as many one-thread tasks as this machine has
    # cores).
    ray: str | None = None
    workers: int | None = None
    # A model of several classes (classes.py): its class names and nesting, read from the
    # model before the run (resolve_run_classes), so the output names are known when the
    # folder is planned; None: one class, today's outputs.
    classes: tuple[str, ...] | None = None
    nested: bool = True
    # volumes: the voxel axis slices are taken along (0, 1, 2); None: the official BraTS
    # loader's, the last (volumes.segment_volume)
    axis: int | None = None

    def __post_init__(self):
        if not str(self.output).strip():
            raise UsageError("-o/--output is empty (an unset shell variable?); name a folder")
        self.output = Path(self.output)
        v = self.max_pixels
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"--max-pixels must be an integer >= 1, got {v!r}")
        if self.batch_size == "auto":
            pass
        elif self.batch_size is not None and (isinstance(self.batch_size, bool)
                                              or not isinstance(self.batch_size, int)
                                              or self.batch_size < 1):
            raise UsageError(f"--batch-size must be an integer >= 1 or 'auto', got "
                             f"{self.batch_size!r}")
        if self.axis is not None and (isinstance(self.axis, bool)
                                      or self.axis not in VOLUME_AXES):
            raise UsageError(f"--axis must be one of {', '.join(map(str, VOLUME_AXES))} (the "
                             f"voxel axis volumes are sliced along), got {self.axis!r}")
        for name in ("threads", "workers"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= 1, "
                                 f"got {v!r}")
        try:
            self.segment_options()                 # the segment options, checked once here
        except ValueError as e:                    # "zoom_outside must ..." -> "--zoom-outside
            raise UsageError(_as_flag(str(e))) from None   # must ...", the flag's spelling

    def segment_options(self) -> SegmentOptions:
        """What every image is segmented with, as `segment()` takes it (options.py);
        resolved against the model when it loads (`Segmenter.resolve`)."""
        return SegmentOptions(
            steps=self.steps, ensemble=self.ensemble, spacing=self.spacing, seed=self.seed,
            sampler=self.sampler, clip_x0=self.clip_x0, fusion=self.fusion,
            refine=self.refine, crop=self.crop, zoom_outside=self.zoom_outside,
            zoom_passes=self.zoom_passes, zoom_boxes=self.zoom_boxes,
            precision=self.precision, tta=self.tta,
            postprocess=self.postprocess)

    def kinds(self) -> list[str]:
        """Output kinds every finished image must have, the mask last (written last)."""
        if self.classes:
            return class_kinds(self.classes, self.maps, self.overlay)
        return ((["probability", "uncertainty"] if self.maps else [])
                + (["overlay"] if self.overlay else []) + ["mask"])


def _as_flag(message: str) -> str:
    """segment()'s message about one of its arguments, the argument named as the command
    line's flag: "zoom_outside must be ..." -> "--zoom-outside must be ..."."""
    name = re.match(r"\w*", message).group(0)
    return f"--{name.replace('_', '-')}{message[len(name):]}"


@dataclass
class RunState:
    """Everything a run learns as it goes; what the summaries and the exit code come from."""
    opts: BatchOptions
    out_s: object                       # where the summary is printed
    err_s: object                       # where progress, failures and notes go
    t0: float
    settings: dict = field(default_factory=dict)
    gt: GroundTruth | None = None
    order: list[str] = field(default_factory=list)          # keys in input order
    done: dict[str, dict] = field(default_factory=dict)     # key -> record of finished images
    failures: list[tuple[str, str]] = field(default_factory=list)   # (input, why)
    segmented: int = 0
    skipped: int = 0
    interrupted: int = 0                # the signal that stopped the run, 0 if none
    fatal: str | None = None            # why writing stopped the run
    total: int | None = None            # inputs named (images found + arguments that gave none)
    earlier: list[dict] = field(default_factory=list)   # the folder's records of other inputs

    def fail(self, path, why: str) -> None:
        self.failures.append((str(path), why))

    def records(self, with_earlier: bool = True) -> list[dict]:
        """This run's inputs' records in input order, then (with_earlier) the folder's
        records of other inputs."""
        own = [self.done[k] for k in self.order if k in self.done]
        return own + self.earlier if with_earlier else own

    def info(self) -> dict:
        records = self.records()
        scored = [dict(r["metrics"]) for r in records if r.get("metrics") is not None]
        summary = summarise(scored) if scored else None
        classes = self.opts.classes
        if summary is not None and classes:     # several classes: each one's summary too
            from ..metrics import summarise_classes
            summary["classes"] = summarise_classes(scored, classes)
        return {"title": f"dsd-fast segment: {self.opts.output.resolve().name}",
                "settings": self.settings,
                "counts": {"segmented": self.segmented, "skipped": self.skipped,
                           "failed": len(self.failures)},
                "summary": summary, **({"classes": list(classes)} if classes else {})}


def process(state: RunState, queue: list[InputImage], pipe, batch: int, bar,
            after_batch=None) -> int:
    """Decode, segment and write the images of `queue`, `batch` at a time, into the state
    (records in state.done, failures in state.failures; nothing raised for one image).
    The one loop of the local command and of each Ray worker. Returns the batch size left
    after any out-of-memory halving."""
    opts = state.opts
    try:
        seg = pipe.resolve(opts.segment_options())         # checked against the model once
    except ValueError as e:
        raise UsageError(str(e)) from None
    volumes = [im for im in queue if is_volume_input(im)]    # NIfTI files, BraTS cases
    queue = [im for im in queue if not is_volume_input(im)]
    for im in volumes:
        if opts.fail_fast and state.failures:
            break
        segment_volume_input(state, im, pipe, seg.replace(batch_size=batch),   # slices
                             axis=opts.axis)
        bar.update(1)
    while queue and not (opts.fail_fast and state.failures):
        chunk, queue = _take_prepared(state, queue, batch, pipe, seg, bar)
        if not chunk:
            continue
        results, batch = _segment_chunk(state, chunk, pipe, seg, batch, bar)
        for prep, res in results:
            _write_one(state, prep, res)
            bar.update(1)
            if opts.fail_fast and state.failures:
                break
        if after_batch is not None:
            after_batch()
    return batch


def network_batch(pipe, opts: BatchOptions) -> int:
    if opts.batch_size == "auto":
        return auto_batch_size(pipe, opts.ensemble)
    return opts.batch_size or 1


def load_checked_pipeline(model, opts: BatchOptions):
    """The run's pipeline, its steps and ensemble checked against it (T is the model's)."""
    pipe = load_pipeline(model, opts)
    if not pipe.choices().samplers:        # no sampling loop (DiffSeg): no steps to record
        opts.steps = opts.spacing = None
    try:
        pipe.resolve(steps=opts.steps, ensemble=opts.ensemble, spacing=opts.spacing)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    return pipe


def load_pipeline(model, opts: BatchOptions):
    """The run's model as a segmenter (opts.checkpoint when `model` is None); UsageError
    when it does not load."""
    from ..api import as_pipeline, load
    from ..checkpoint import CheckpointError
    try:
        if model is None and opts.checkpoint is not None and opts.model_settings:
            return load(opts.checkpoint, **opts.model_settings)
        return as_pipeline(model if model is not None else opts.checkpoint)
    except (FileNotFoundError, CheckpointError, OSError, ValueError, TypeError) as e:
        raise UsageError(f"cannot load the model: {e}") from None


def _take_prepared(state: RunState, queue, batch, pipe, seg, bar):
    """Decode images from the queue until `batch` are ready (failures recorded)."""
    chunk = []
    while queue and len(chunk) < batch:
        item = queue.pop(0)
        try:
            chunk.append(prepare(item, pipe, state.opts.max_pixels, seg))
        except ImageInputError as e:
            state.fail(item.path, str(e))
            bar.update(1)
            if state.opts.fail_fast:           # finish the images before it, then stop
                return chunk, []
        except MemoryError:
            state.fail(item.path, "out of memory while decoding it")
            bar.update(1)
    return chunk, queue


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower() \
        or "can't allocate memory" in str(e).lower()


def _segment_chunk(state: RunState, chunk, pipe, seg, batch, bar):
    """The segmenter's loop (`segment_views`, as `segment()` runs it) on the chunk's views,
    `batch` images per network batch; results at each image's size. When the network runs
    out of memory the batch is halved, for the rest of the run too. An image whose file
    cannot be read again (the CRF's picture, a finer zoom pass's crop) is a failed image;
    a piece that fails otherwise (a ValueError: something the CRF cannot take) is redone
    one image at a time, so only the image that fails is recorded as failed.
    Returns ([(prepared, result)], batch)."""
    done, i, alone_until = [], 0, 0
    while i < len(chunk):
        piece = chunk[i:i + (1 if i < alone_until else batch)]
        sources = _sources_for(piece, pipe, seg, state.opts)
        try:
            # Noise keyed by each image's output name: a resumed or re-batched run gives
            # every image the same chains as an uninterrupted one.
            res = pipe.segment_views([p.model_chw for p in piece],
                                     [(p.height, p.width) for p in piece],
                                     [p.item.key for p in piece],
                                     seg.replace(batch_size=len(piece)), images=sources)
        except (MemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            if len(piece) > 1:
                batch = max(1, len(piece) // 2)
                continue
            state.fail(piece[0].item.path, "out of memory in the network")
            bar.update(1)
        except FloatingPointError as e:
            for p in piece:
                state.fail(p.item.path, f"the sampler failed: {e}")
                bar.update(1)
        except ValueError as e:
            if len(piece) > 1:
                alone_until = i + len(piece)
                continue
            state.fail(piece[0].item.path, f"segmenting it failed: {e}")
            bar.update(1)
        else:
            for k, (p, r) in enumerate(zip(piece, res)):
                if r is not None:
                    done.append((p, r))
                    continue
                state.fail(p.item.path, sources[k].error or "it could not be read again")
                bar.update(1)
        i += len(piece)
    return done, batch


def _sources_for(piece, pipe, seg, opts: BatchOptions) -> list | None:
    """What segment_views reads beside the views: each file as a source read again, one
    image at a time, for the CRF's picture and the finer passes' crops under crop="zoom"
    (cli/image_sources.py); None when neither is asked for."""
    if seg.crop != "zoom" and not seg.refine:
        return None
    from .image_sources import FileSource
    return [FileSource(p, pipe.channels, opts.max_pixels) for p in piece]


def _write_one(state: RunState, prep, res) -> None:
    try:
        rec, score_error = write_outputs(prep, res, state.opts, state.gt, state.settings)
    except OutputError as e:
        if e.errno in WHOLE_FOLDER_ERRNOS:
            raise                          # disk full, read-only: every later image fails too
        state.fail(prep.item.path, str(e))
    except ImageInputError as e:
        state.fail(prep.item.path, str(e))
    except MemoryError:
        state.fail(prep.item.path, "out of memory while writing its outputs")
    else:
        rec["status"] = "segmented"
        state.done[prep.item.key] = rec
        state.segmented += 1
        if score_error:
            state.fail(prep.item.path, score_error)
