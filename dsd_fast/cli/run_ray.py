"""`dsd-fast segment --ray`: the same run, its images segmented by Ray tasks.

The driver does what the local command does before and after the segmentation (discovery,
the output-folder lock and checks, skipping finished images, summaries); in between, the
images to do become a Ray Data dataset, and `map_batches` hands batches of them to at most
`workers` tasks at a time. A worker process loads the model and builds its fast path on its
first batch and keeps it for the run's later batches (`_run_pipeline`), then runs the local
command's own loop on each batch (worker.process: decode, segment, write every output
atomically, then the image's record) and returns one row per image: its record, or why it
failed. So an image's outputs are the ones a one-machine run writes, whoever segments it
and in whatever order (the initial noise is keyed by the output name), and a re-run skips
what any worker finished.

Tasks, not an actor pool: Ray Data creates pool actors with its own arguments in the object
store and restarts allowed, which makes Ray's C++ core worker print an error line to the
driver's terminal that no Python setting reaches (ray-project/ray#53727); a task's worker
process keeps its model in this module's `_LOADED` just as an actor would.

Failures: a corrupt image is a row with its error, the job goes on. A worker process that
dies (killed, out of memory) is replaced by Ray and its batch retried (Ray Data retries its
map tasks without limit by default; outputs are rewritten whole, atomically, with the same
content). Ctrl-C stops the job; the finished images are recorded, and the same command
resumes. A full disk (or a read-only folder) stops the run as it stops the local one; any
other error a worker raises stops it with that error's one line. What Ray itself prints
goes through ray_terminal.py: the command's own lines only.

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
import uuid
from pathlib import Path

from .discover import InputImage
from .errors import OutputError, UsageError

RAY_HINT = "pip install 'dsd_fast[ray]' (Ray with Ray Data)"
BATCH_PER_TASK = 4           # images per map_batches call: a crash redoes at most this many


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray needs Ray: {RAY_HINT}") from None
    return ray


def _init(ray, address: str, cpus: int | None, terminal) -> bool:
    """Join or start a Ray instance; True when this call started it (then it is shut down
    at the end). `terminal` (a RayTerminal) gives ray.init the logging arguments that keep
    Ray's notices on its one-line handler."""
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, log_to_driver=False, **terminal.init_kwargs())
    if address == "local":
        ray.init(num_cpus=cpus, **kw)
    else:
        ray.init(address=address, **kw)
    return True


# This worker process's pipeline for the run it is working for: {run id: _Loaded}. One
# entry: a later run on the same cluster (segment_files called again) replaces it.
_LOADED: dict = {}


@dataclasses.dataclass
class _Loaded:
    opts: object                 # worker.BatchOptions
    settings: dict
    pipe: object
    gt: object                   # evaluate.GroundTruth or None


def _run_pipeline(run: str, opts: dict, settings: dict, model_ref: list) -> _Loaded:
    """The run's pipeline in this worker process, loaded on its first batch."""
    loaded = _LOADED.get(run)
    if loaded is None:
        import ray
        import torch

        from .evaluate import GroundTruth
        from .worker import BatchOptions, load_checked_pipeline
        _LOADED.clear()                     # an earlier run's model is not needed again
        torch.set_num_threads(opts.get("threads") or 1)
        bopts = BatchOptions(**{**opts, "ray": None, "quiet": True})
        model = ray.get(model_ref[0]) if model_ref else None
        loaded = _LOADED[run] = _Loaded(bopts, settings, load_checked_pipeline(model, bopts),
                                        GroundTruth(bopts.gt) if bopts.gt else None)
    return loaded


def segment_batch(batch: dict, *, run: str, opts: dict, settings: dict,
                  model_ref: list) -> dict:
    """One Ray task: the local loop on `batch` (columns path, key, rel_dir; up to
    BATCH_PER_TASK images); one row per image: key, record (JSON, "" if none), error ("" if
    none), fatal (why the run must stop, "" if it need not). `model_ref`: [ObjectRef of an
    in-memory model], or [] to load opts["checkpoint"]; in a list, so that Ray hands it over
    unresolved and only a process's first batch fetches the model."""
    import sys

    from ..io import WHOLE_FOLDER_ERRNOS
    from .worker import RunState, network_batch, process
    loaded = _run_pipeline(run, opts, settings, model_ref)
    state = RunState(loaded.opts, sys.stdout, sys.stderr, 0.0, settings=loaded.settings,
                     gt=loaded.gt)
    items = [InputImage(Path(p), k, d) for p, k, d in
             zip(batch["path"], batch["key"], batch["rel_dir"])]
    _test_crash_hook(len(items))
    fatal = ""
    try:
        process(state, list(items), loaded.pipe, network_batch(loaded.pipe, loaded.opts),
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
    """Segment `todo` with Ray tasks into state (records and failures), as the local loop
    would. Ctrl-C raises KeyboardInterrupt after the job is cancelled; a full disk or a
    failed worker stops the run (state.fatal), as in the local command; a model that does
    not load raises UsageError before Ray starts."""
    from .ray_terminal import RayTerminal
    from .worker import load_checked_pipeline
    ray = _import_ray()
    # Load the model once here first: a file the workers could not load is the local
    # command's one-line usage error, not every worker's traceback after Ray's retries.
    load_checked_pipeline(model, state.opts)
    with RayTerminal(state.opts.quiet) as terminal:
        started = _init(ray, state.opts.ray, os.cpu_count(), terminal)
        try:
            _run_job(ray, state, todo, model)
        finally:
            if started:
                ray.shutdown()
    if state.fatal and started:
        # the workers are gone: a temp file one of them was writing is nobody's now
        from ..io import remove_stale_temp_files
        remove_stale_temp_files(state.opts.output)


def _run_job(ray, state, todo: list[InputImage], model) -> None:
    """The dataset of `todo`, its map_batches on `workers` tasks at a time, the rows in."""
    from tqdm.auto import tqdm
    opts = state.opts
    threads = opts.threads or 1
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
    model_ref = [ray.put(model)] if model is not None else []   # held here for the job
    # (Ray Data retries a map task whose worker died without limit by default: the batch
    # of a killed worker is redone; tests/cli/test_run_ray.py.)
    pool = getattr(ray.data, "TaskPoolStrategy", None)   # older Ray: concurrency= instead
    limit = dict(compute=pool(size=workers)) if pool else dict(concurrency=workers)
    out = ds.map_batches(
        segment_batch, batch_size=BATCH_PER_TASK, batch_format="numpy",
        fn_kwargs={"run": uuid.uuid4().hex, "opts": opts_dict, "settings": state.settings,
                   "model_ref": model_ref},
        num_cpus=threads, **limit)
    bar = tqdm(total=len(todo), unit="img", desc=f"segment (ray, {workers} workers)",
               disable=opts.quiet, file=state.err_s, dynamic_ncols=True)
    try:
        _collect(state, out.iter_rows(), {im.key: im for im in todo}, bar)
    finally:
        bar.close()


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
