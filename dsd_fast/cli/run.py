"""`dsd-fast segment`: segment many image files into an output folder, safely.

    discover.py   which inputs, their output names (keys), decoding into network inputs
    outputs.py    each image's files and record, the run's summaries, the folder lock
    worker.py     the options, the run's state and the per-image loop (shared with Ray)
    run.py        this file: the local driver: plan, resume, summaries, exit codes
    run_settings.py  the model's defaults the run resolves before it starts
    run_ray.py    the same run with the loop in Ray tasks

Crash safety. Every file is written through io.atomic_write, so a target is either absent
or complete. A re-run skips finished images (unless `overwrite`) and redoes the rest. A lock
file keeps two runs out of one folder, which also makes it safe to delete temporary files
left by a killed run. Ctrl-C and SIGTERM stop the run between two Python operations:
temporary files are removed and results.json / index.html are written for what finished.

Memory. The network sees every image at its model size (S x S), so one batch of images
costs the same however large the images are. Each image is decoded once for the model
input (above `max_pixels` from a reduced decode: JPEG draft or PIL reduce) and once more
when its outputs are written, one image at a time; the maps at the original size are built
in strips (about 20 bytes per pixel at the peak, ~1.3 GB for a 64-megapixel image). A CRF's
picture and crop="zoom"'s second-pass crop are read from the file again when the segmenter
needs them, one image at a time (image_sources.py; the crop within `max_pixels`).

Masks are those of `segment()`: for an image up to `max_pixels` the model input, the
probability map and the mask are bit-identical to `segment(path, noise_keys=[key])`'s, key
being the image's output name (e.g. "sub/a"): the initial noise is keyed by that name, so
batch composition and resuming do not change an image's result.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..images import ImageInputError, load_mask
from ..io import remove_stale_temp_files
from .discover import InputImage, discover, is_inside
from .volume_inputs import finished_volume_record, is_volume_input
from .errors import Interrupted, OutputError, UsageError
from .evaluate import GroundTruth, format_summary
from .outputs import (STATE_DIR, OutputLock, earlier_records, finished_record,
                      foreign_outputs, foreign_summaries, other_input, output_paths,
                      read_record, still_valid, write_summaries)
# the options, the state and the loop the Ray workers share (BatchOptions stays importable
# from here, where callers have always found it)
from .worker import (BatchOptions, RunState, load_checked_pipeline, network_batch,
                     process)
# the model's defaults filled in before the run (importable from here, as they always were)
from .run_settings import resolve_run_classes, resolve_run_sampling

SUMMARY_EVERY_S = 120.0        # rewrite results.json / index.html this often during a run


@dataclass
class RunSummary:
    exit_code: int
    segmented: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    interrupted: bool = False
    elapsed_s: float = 0.0


def run(inputs: Sequence[str], opts: BatchOptions, model=None, out=None, err=None) -> RunSummary:
    """Segment `inputs` into opts.output; prints progress and a summary; never raises for
    bad images, bad arguments or interrupts (see RunSummary.exit_code: 0 all done, 1 some
    image failed or writing failed, 2 the run could not start, 130 / 143 interrupted).
    `model`: a Pipeline, network or checkpoint path instead of opts.checkpoint."""
    state = RunState(opts, out or sys.stdout, err or sys.stderr, time.monotonic())
    try:
        with _signals_interrupt():
            return _run(inputs, state, model)
    except UsageError as e:
        print(f"error: {e}", file=state.err_s)
        return RunSummary(exit_code=2, elapsed_s=time.monotonic() - state.t0)
    except KeyboardInterrupt as e:               # before anything was written
        signum = getattr(e, "signum", signal.SIGINT)
        print("interrupted", file=state.err_s)
        return RunSummary(exit_code=128 + signum, interrupted=True)


def segment_files(inputs: Sequence[str], output, model=None, quiet: bool = True,
                  **options) -> RunSummary:
    """The command line's `segment` as a function: files, folders and globs in, the output
    folder written as `dsd-fast segment` writes it (masks, maps, overlays, records,
    results, report; resumable). `options` are BatchOptions fields (steps, ensemble, seed,
    gt, ray="local" or an address, workers, threads, ...); `model` a Pipeline, network or
    path instead of `checkpoint`. Bad arguments raise UsageError; bad images are in
    the summary's failures."""
    import io
    opts = BatchOptions(output=output, quiet=quiet, **options)
    err = io.StringIO()
    summary = run(inputs, opts, model, out=io.StringIO(), err=err)
    if summary.exit_code == 2:
        lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error: ")]
        raise UsageError(lines[-1][len("error: "):] if lines else "the run could not start")
    return summary


def _run(inputs, state: RunState, model) -> RunSummary:
    opts = state.opts
    out = opts.output
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")
    found = discover(inputs, opts.recursive, exclude=out)
    if not found.images and not found.missing:
        raise UsageError("no input images found")
    if not opts.allow_inplace and any(is_inside(out, d) for d in found.input_dirs):
        raise UsageError(f"output folder {out} is inside an input folder; choose another -o, "
                         "or pass --allow-inplace")
    state.gt = GroundTruth(opts.gt) if opts.gt else None
    state.failures = list(found.missing)
    state.total = len(found.images) + len(found.missing)
    if not found.images:
        return _finish(state, write=False)
    theirs = [] if opts.overwrite else foreign_summaries(out)
    if theirs:
        raise UsageError(f"{theirs[0]} exists and was not written by dsd-fast; choose another "
                         "-o, or pass --overwrite to replace it")
    made = _folders_to_make(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(out).acquire()
    except OSError as e:
        _remove_empty_state(out, made)
        raise UsageError(f"cannot write into the output folder {out}: {e}") from None
    except UsageError:
        _remove_empty_state(out, made)
        raise
    try:
        with lock:
            return _locked_run(state, found, model)
    except UsageError:               # the run could not start (a model that does not load)
        _remove_empty_state(out, made)
        raise


def _locked_run(state: RunState, found, model) -> RunSummary:
    """The run once it holds the output folder's lock."""
    opts, out = state.opts, state.opts.output
    remove_stale_temp_files(out)
    resolve_run_sampling(opts, model, state.err_s)
    resolve_run_classes(opts, model)
    state.settings = _settings(opts, model)
    state.order = [im.key for im in found.images]
    todo = _plan(state, found.images)
    try:
        if todo and opts.ray is not None:
            from .run_ray import segment_on_ray
            segment_on_ray(state, todo, model)
        elif todo:
            _segment_all(state, todo, model)
    except OutputError as e:
        state.fatal = str(e)
    except KeyboardInterrupt as e:
        state.interrupted = getattr(e, "signum", signal.SIGINT)
        remove_stale_temp_files(out)      # a temp file created in the last instant
    if opts.overwrite:                     # stopped early: earlier outputs still count
        _keep_earlier_outputs(state, found.images)
    if state.gt is not None:               # score the skipped images from their masks
        _score_skipped(state, found.images)
    # the folder's other finished images (an earlier run's inputs): results describe it all
    state.earlier = earlier_records(out, skip=set(state.order))
    for rec in state.earlier:
        rec["status"] = "earlier"
    return _finish(state)


def _plan(state: RunState, images: list[InputImage]) -> list[InputImage]:
    """Split the inputs into finished ones (recorded as skipped) and the ones to do."""
    opts, out = state.opts, state.opts.output
    inputs_real = {im.path.resolve() for im in images}
    todo: list[InputImage] = []
    mismatched, example = 0, None
    for im in images:
        clash = [p for p in output_paths(out, im.key, opts.kinds()).values()
                 if p.resolve() in inputs_real]
        if clash:
            state.fail(im.path, f"output {clash[0]} would overwrite an input")
            continue
        theirs = [] if opts.overwrite else foreign_outputs(out, im.key, opts.kinds())
        if theirs:
            state.fail(im.path, f"output {theirs[0]} exists and was not written by dsd-fast "
                       "(pass --overwrite to replace it)")
            continue
        earlier = None if opts.overwrite else read_record(out, im.key)
        other = other_input(earlier, im)
        if other is not None:
            state.fail(im.path, f"its output name {im.key!r} holds the outputs of {other}, "
                       "segmented into this folder earlier; pass --overwrite to replace them, "
                       "or choose another -o")
            if still_valid(earlier, out):          # the other input's results still count
                earlier["status"] = "earlier"
                state.done[im.key] = earlier
            continue
        finished = finished_volume_record if is_volume_input(im) else finished_record
        rec = None if opts.overwrite else finished(im, opts)
        if rec is None:
            todo.append(im)
            continue
        if rec.get("settings") != state.settings:
            mismatched += 1
            example = example or rec.get("settings") or {}
        rec["status"] = "skipped"
        state.done[im.key] = rec
    if mismatched:
        diff = settings_difference(example, state.settings)
        print(f"note: {mismatched} finished image(s) were made with other settings "
              f"({diff}); they are kept, pass --overwrite to redo them", file=state.err_s)
    state.skipped = len(state.done)
    return todo


def settings_difference(earlier: dict, now: dict) -> str:
    """What the resume note says differs between a finished image's settings (`earlier`)
    and this run's (`now`), over the keys of both: an option is recorded only when not its
    default, so a key only one side has is "the default" on the other."""
    def shown(settings: dict, k: str) -> str:
        return str(settings[k]) if k in settings else "the default"

    keys = [*now, *(k for k in earlier if k not in now)]
    return ", ".join(f"{k} {shown(earlier, k)} instead of {shown(now, k)}"
                     for k in keys if (k in earlier, earlier.get(k)) != (k in now, now.get(k)))


def _segment_all(state: RunState, todo: list[InputImage], model) -> None:
    """Decode, segment and write `todo`, a batch at a time (failures recorded, not raised)."""
    import torch
    from tqdm.auto import tqdm
    opts = state.opts
    threads_before = torch.get_num_threads()
    try:
        if opts.threads:
            torch.set_num_threads(opts.threads)
        pipe = load_checked_pipeline(model, opts)
        batch = network_batch(pipe, opts)
        bar = tqdm(total=len(todo), unit="img", desc="segment", disable=opts.quiet,
                   file=state.err_s, dynamic_ncols=True)
        last_summary = time.monotonic()

        def every_batch():
            nonlocal last_summary
            if time.monotonic() - last_summary > SUMMARY_EVERY_S:
                _write_summaries_quietly(state)
                last_summary = time.monotonic()
        try:
            process(state, list(todo), pipe, batch, bar, every_batch)
        finally:
            bar.close()
    finally:
        torch.set_num_threads(threads_before)


def _folders_to_make(out: Path) -> list[Path]:
    """`out` and those of its parents that do not exist yet, innermost first."""
    made = []
    for p in (out, *out.parents):
        if p.exists():
            break
        made.append(p)
    return made


def _remove_empty_state(out: Path, made: list[Path]) -> None:
    """After a run that could not start: remove its state folder and the folders it made,
    where they are empty (nothing anyone wrote is ever removed)."""
    state = out / STATE_DIR
    for p in (state / "claims", state / "done", state, *made):
        try:
            p.rmdir()
        except OSError:
            pass


def _keep_earlier_outputs(state: RunState, images) -> None:
    failed_names = {n for n, _ in state.failures}
    for im in images:
        if im.key not in state.done and str(im.path) not in failed_names:
            rec = finished_record(im, state.opts)
            if rec is not None:
                rec["status"] = "earlier"
                state.done[im.key] = rec


def _score_skipped(state: RunState, images) -> None:
    for im in images:
        rec = state.done.get(im.key)
        if rec is None or rec.get("status") not in ("skipped", "earlier") \
                or other_input(rec, im) is not None:     # another input's mask: not this one's
            continue
        try:
            if state.opts.classes:                 # several classes: the label map
                from ..classes import load_label_map
                labels = load_label_map(state.opts.output / rec["outputs"]["labels"],
                                        len(state.opts.classes))
                rec["metrics"] = state.gt.score_labels(im, labels, state.opts.classes,
                                                       state.opts.nested)
                continue
            mask = load_mask(state.opts.output / rec["outputs"]["mask"]).numpy()
            rec["metrics"] = state.gt.score(im, mask)
        except (ValueError, ImageInputError) as e:
            rec["metrics"] = None
            state.fail(im.path, str(e))


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM (plain `kill`) interrupts like Ctrl-C, so temp files get cleaned up too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _settings(opts: BatchOptions, model) -> dict:
    from ..api import BUNDLED
    if opts.checkpoint in BUNDLED and not Path(opts.checkpoint).exists():
        ckpt = f"(bundled {opts.checkpoint})"
    elif opts.checkpoint is not None:
        ckpt = str(Path(opts.checkpoint).resolve())
    elif model is not None:
        ckpt = "(model object)"
    else:
        ckpt = "(bundled default)"
    out = {"checkpoint": ckpt, "steps": opts.steps, "ensemble": opts.ensemble,
           "seed": opts.seed, "clip_x0": opts.clip_x0}
    if opts.model_settings:
        out["model_settings"] = dict(opts.model_settings)
    if opts.axis is not None:                  # volumes' slice axis, when chosen
        out["axis"] = opts.axis
    if opts.precision != "fp32":
        # what this machine runs ("bf16" falls back to float32 without native bfloat16);
        # recorded only when not the default, so runs from before the option still match
        from ..precision import resolve_precision
        out["precision"] = resolve_precision(opts.precision, "cpu")
    if opts.spacing != "leading":
        out["spacing"] = opts.spacing
    if opts.tta:
        out["tta"] = True
    if opts.postprocess is not None:           # resolved by now; recorded only when used
        out["postprocess"] = opts.postprocess
    # the family options, recorded only when not the default (so earlier runs still match)
    for name, default in (("sampler", None), ("fusion", "mean"), ("refine", None),
                          ("crop", None)):
        if getattr(opts, name) != default:
            out[name] = getattr(opts, name)
    if opts.zoom_outside == "background":      # resolved by now; "pass1" is what ran before
        out["zoom_outside"] = opts.zoom_outside
    if opts.zoom_passes == 3:                  # resolved by now; 2 is what ran before
        out["zoom_passes"] = opts.zoom_passes
    if opts.zoom_boxes and opts.zoom_boxes > 1:  # resolved by now; 1 is what ran before
        out["zoom_boxes"] = opts.zoom_boxes
    return out


def _write_summaries_quietly(state: RunState) -> None:
    """Periodic update during the run: a failure here must not stop the segmentation."""
    try:
        write_summaries(state.opts.output, state.records(), state.failures, state.info(),
                        state.opts.report)
    except OutputError as e:
        print(f"warning: {e}", file=state.err_s)


def _finish(state: RunState, write: bool = True) -> RunSummary:
    opts, out = state.opts, state.opts.output
    info = state.info()
    if write:
        try:
            write_summaries(out, state.records(), state.failures, info, opts.report)
        except OutputError as e:
            state.fatal = state.fatal or str(e)
        except KeyboardInterrupt as e:
            state.interrupted = state.interrupted or getattr(e, "signum", signal.SIGINT)
    elapsed = time.monotonic() - state.t0
    out_s, err_s = state.out_s, state.err_s
    if info["summary"] is not None:
        print(format_summary(info["summary"], info["summary"]["n_images"]), file=out_s)
        print(f"per-image metrics: {out / 'metrics.csv'}", file=out_s)
    for name, why in state.failures:
        print(f"failed: {why if name in why else f'{name}: {why}'}", file=err_s)
    records = state.records(with_earlier=False)        # this run's inputs
    total = state.total if state.total is not None else len(records) + len(state.failures)
    rate = (f", {state.segmented / elapsed:.2f} images/s"
            if state.segmented and elapsed > 0 else "")
    print(f"segmented {state.segmented}, skipped {state.skipped} (already done), failed "
          f"{len(state.failures)} of {total} inputs in {elapsed:.1f} s{rate}; outputs in {out}",
          file=out_s)
    if write:
        print(f"results: {out / 'results.json'}, {out / 'results.csv'}"
              + (f"; report: {out / 'index.html'}" if opts.report else ""), file=out_s)
    if state.fatal:
        print(f"error: {state.fatal}; stopped", file=err_s)
    if state.interrupted:
        print(f"interrupted: {len(records)} of {total} inputs finished; run the same command "
              "again to resume", file=err_s)
        code = 128 + int(state.interrupted)
    elif state.fatal or state.failures:
        code = 1
    else:
        code = 0
    return RunSummary(exit_code=code, segmented=state.segmented, skipped=state.skipped,
                      failures=state.failures, records=records,
                      interrupted=bool(state.interrupted), elapsed_s=elapsed)
