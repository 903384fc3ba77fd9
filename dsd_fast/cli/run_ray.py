"""`dsd-fast segment --ray`: the same run, its images segmented by a pool of Ray actors.

The driver does what the local command does before and after the segmentation (discovery,
the output-folder lock and checks, skipping finished images, summaries); in between, the
images to do become a Ray Data dataset, and `map_batches` hands batches of them to a pool of
actors. Each actor loads the model and builds its fast path once, then runs the local
command's own loop on its batch (worker.process: decode, segment, write every output
atomically, then the image's record) and returns one row per image: its record, or why it
failed. So an image's outputs are the ones a one-machine run writes, whoever segments it
and in whatever order (the initial noise is keyed by the output name), and a re-run skips
what any worker finished.

Failures: a corrupt image is a row with its error, the job goes on. A worker process that
dies (killed, out of memory) is restarted by Ray and its batch retried (Ray Data's actor
pools restart actors and retry their tasks without limit by default; outputs are rewritten
whole, atomically, with the same content). Ctrl-C stops the job; the finished images are
recorded, and the same command resumes. A full disk (or a read-only folder) stops the run as
it stops the local one; any other error a worker raises stops it with that error's one line.

Inputs, the model file and the output folder must be on a file system every worker sees
(one machine: the local disk; a cluster: a shared mount such as NFS). Object storage
(s3://, gs://) is not supported: inputs are discovered and outputs written with local file
operations.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

from .discover import InputImage
from .errors import OutputError, UsageError

RAY_HINT = "pip install 'dsd_fast[ray]' (Ray with Ray Data)"
BATCH_PER_ACTOR = 4          # images per map_batches call: a crash redoes at most this many


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray needs Ray: {RAY_HINT}") from None
    return ray


def _init(ray, address: str, cpus: int | None, quiet: bool = False) -> bool:
    """Join or start a Ray instance; True when this call started it (then it is shut down
    at the end). `quiet` (-q): Ray's own notices stay off the terminal too (its loggers'
    warnings, the raylet's messages to the driver, colour codes; errors still show)."""
    import logging
    logging.getLogger("ray.data").setLevel(logging.ERROR if quiet else logging.WARNING)
    if quiet:
        logging.getLogger("ray").setLevel(logging.ERROR)
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        import ray._private.worker as ray_worker
        if hasattr(ray_worker, "_worker_logs_enabled"):            # raylet notices (yellow)
            ray_worker._worker_logs_enabled = False
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address == "local":
        ray.init(num_cpus=cpus, **kw)
    else:
        ray.init(address=address, **kw)
    return True


class SegmentWorker:
    """One Ray actor: the pipeline built once, then the local loop on each batch."""

    def __init__(self, opts: dict, settings: dict, model=None):
        import sys

        import torch

        from .evaluate import GroundTruth
        from .worker import BatchOptions, RunState, load_checked_pipeline
        torch.set_num_threads(opts.get("threads") or 1)
        self.opts = BatchOptions(**{**opts, "ray": None, "quiet": True})
        self.settings = settings
        self.pipe = load_checked_pipeline(model, self.opts)
        self.gt = GroundTruth(self.opts.gt) if self.opts.gt else None
        self._state = lambda: RunState(self.opts, sys.stdout, sys.stderr, 0.0,
                                       settings=self.settings, gt=self.gt)

    def __call__(self, batch: dict) -> dict:
        from ..io import WHOLE_FOLDER_ERRNOS
        from .worker import network_batch, process
        state = self._state()
        items = [InputImage(Path(p), k, d) for p, k, d in
                 zip(batch["path"], batch["key"], batch["rel_dir"])]
        _test_crash_hook(len(items))
        fatal = ""
        try:
            process(state, list(items), self.pipe, network_batch(self.pipe, self.opts),
                    _NoBar())
        except OutputError as e:
            if e.errno not in WHOLE_FOLDER_ERRNOS:
                raise
            # disk full, read-only: every later image fails too. Returned, not raised, so
            # the images this batch finished are recorded and the driver stops the run.
            fatal = str(e)
        errors = {}
        for name, why in state.failures:
            errors.setdefault(name, why)
        rows = {"key": [], "record": [], "error": [], "fatal": []}
        for im in items:
            rec = state.done.get(im.key)
            rows["key"].append(im.key)
            rows["record"].append(json.dumps(rec) if rec is not None else "")
            unknown = "" if rec is not None or fatal else "not segmented (unknown reason)"
            rows["error"].append(errors.get(str(im.path), unknown))
            rows["fatal"].append(fatal)
        return rows


class _NoBar:
    def update(self, n=1):
        pass


def _test_crash_hook(n: int) -> None:
    """For the failure tests only: DSD_FAST_TEST_CRASH_ONCE=<file> makes the first worker
    that sees it die abruptly (as if killed) before its batch, once per marker file."""
    marker = os.environ.get("DSD_FAST_TEST_CRASH_ONCE")
    if marker and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def segment_on_ray(state, todo: list[InputImage], model=None) -> None:
    """Segment `todo` on a Ray actor pool into state (records and failures), as the local
    loop would. Ctrl-C raises KeyboardInterrupt after the job is cancelled; a full disk or
    a failed worker stops the run (state.fatal), as in the local command; a model that does
    not load raises UsageError before Ray starts."""
    from tqdm.auto import tqdm

    from .worker import load_checked_pipeline
    ray = _import_ray()
    opts = state.opts
    threads = opts.threads or 1
    # Load the model once here first: a file the workers could not load is the local
    # command's one-line usage error, not every actor's traceback after Ray's retries.
    load_checked_pipeline(model, opts)
    started = _init(ray, opts.ray, os.cpu_count(), quiet=opts.quiet)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = opts.workers or max(1, cpus // threads)
        if workers * threads > cpus:
            raise UsageError(f"--workers {workers} x --threads {threads} needs {workers * threads}"
                             f" CPUs; the Ray cluster has {cpus}")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_progress = False
        opts_dict = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
        opts_dict["output"] = str(opts.output.resolve())
        for key in ("checkpoint", "gt"):
            if opts_dict[key] and Path(opts_dict[key]).exists():
                opts_dict[key] = str(Path(opts_dict[key]).resolve())
        items = [{"path": str(im.path.resolve()), "key": im.key, "rel_dir": im.rel_dir}
                 for im in todo]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        out = ds.map_batches(
            SegmentWorker, batch_size=BATCH_PER_ACTOR, batch_format="numpy",
            fn_constructor_kwargs={"opts": opts_dict, "settings": state.settings,
                                   "model": model},
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads)
        # (Ray Data gives actor-pool actors unlimited restarts and task retries by default:
        # a killed worker is replaced and its batch redone; tests/cli/test_run_ray.py.)
        bar = tqdm(total=len(todo), unit="img", desc=f"segment (ray, {workers} workers)",
                   disable=opts.quiet, file=state.err_s, dynamic_ncols=True)
        try:
            _collect(state, out.iter_rows(), {im.key: im for im in todo}, bar)
        finally:
            bar.close()
    finally:
        if started:
            ray.shutdown()
    if state.fatal and started:
        # the workers are gone: a temp file one of them was writing is nobody's now
        from ..io import remove_stale_temp_files
        remove_stale_temp_files(opts.output)


def _collect(state, rows, by_key: dict, bar) -> None:
    """The workers' rows into state, until they are all in or one says the run must stop.
    An error a worker raised stops the run with its one-line message (state.fatal), or
    raises UsageError when it was one; never Ray's traceback."""
    try:
        for row in rows:
            im = by_key[row["key"]]
            if row["record"]:
                rec = json.loads(row["record"])
                rec["status"] = "segmented"
                state.done[im.key] = rec
                state.segmented += 1
            if row["error"]:      # the worker names the file by its absolute path
                state.fail(im.path, row["error"].replace(str(im.path.resolve()),
                                                         str(im.path)))
            bar.update(1)
            if row["fatal"]:
                state.fatal = row["fatal"]
                return
    except KeyboardInterrupt:
        raise
    except Exception as e:                          # Ray's wrappers of a worker's error
        cause = _worker_error(e)
        if isinstance(cause, UsageError):
            raise UsageError(str(cause)) from None
        if isinstance(cause, OutputError):
            state.fatal = str(cause)
        else:
            why = (str(cause).strip().splitlines() or [""])[0]
            state.fatal = f"a Ray worker failed: {type(cause).__name__}: {why}"


def _worker_error(e: BaseException) -> BaseException:
    """The innermost exception under Ray's wrappers (RayTaskError.cause, __cause__)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException):
            break
        e = inner
    return e
