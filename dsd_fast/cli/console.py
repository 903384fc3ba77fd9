"""How the `dsd-fast` command behaves on a terminal, beyond what it prints itself.

    plain_warnings()        Python warnings as one line, `warning: <message>` (no source line)
    warning_line(text)      such a line for a notice of our own (ray_terminal.py: Ray's)
    cap_threads(n)          --threads above the cores this process may use: capped, said once
    silence_broken_pipe()   `dsd-fast ... | head`: the reader left; stop quietly, as Unix tools

Ctrl-C while the package imports (torch takes seconds, before `main` can catch anything) is
dsd_fast/interrupt_at_start.py's, imported first by dsd_fast/__init__.py.

main.py's `main` uses the first three around every subcommand; they keep the state they
change (warnings.showwarning) to the call, so calling `main` in-process (tests) leaves the
interpreter as it was.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings

from ..interrupt_at_start import EXIT_INTERRUPTED  # noqa: F401  (130 = 128 + SIGINT)
EXIT_BROKEN_PIPE = 141          # 128 + SIGPIPE, what a shell reports for `yes | head`


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _print_warning(message, category, filename, lineno, file=None, line=None,
                   shown: set | None = None) -> None:
    """warnings.showwarning's replacement: `warning: <message>` (see `warning_line`)."""
    warning_line(message, shown, file)


def warning_line(message, shown: set | None = None, file=None) -> None:
    """`warning: <message>` as one line on stderr, written through tqdm when a progress bar
    may be on screen (so the bar is redrawn below the line). A text in `shown` is not
    repeated (PIL warns of a huge image on opening and again on loading)."""
    text = f"warning: {_one_line(message)}"
    if shown is not None:
        if text in shown:
            return
        shown.add(text)
    stream = file or sys.stderr
    try:
        if "tqdm" in sys.modules and stream is sys.stderr:
            from tqdm import tqdm
            tqdm.write(text, file=stream)
        else:
            print(text, file=stream)
    except (OSError, ValueError):        # stderr closed or gone: a warning cannot stop the run
        pass


@contextlib.contextmanager
def plain_warnings():
    """Warnings raised inside the block print as one plain line (see `_print_warning`)."""
    before = warnings.showwarning
    warnings.showwarning = functools.partial(_print_warning, shown=set())
    try:
        yield
    finally:
        warnings.showwarning = before


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a
    container's cpuset), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_threads(threads: int | None, option: str = "--threads") -> int | None:
    """`threads`, or the available cores when it is more (a network run with 1000 threads on
    2 cores is ~50x slower, not faster), with a one-line warning saying so."""
    cores = available_cores()
    if threads is None or isinstance(threads, bool) or not isinstance(threads, int) \
            or threads <= cores:
        return threads
    print(f"warning: {option} {threads} is more than the {cores} CPU core"
          f"{'s' if cores != 1 else ''} this process can use; using {cores}", file=sys.stderr)
    return cores


def silence_broken_pipe() -> None:
    """The reader of stdout (or stderr) has gone (`| head`): point both at /dev/null, so
    that nothing more, not even the interpreter's final flush, raises BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
    os.close(devnull)
