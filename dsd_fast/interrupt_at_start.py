"""Imported first by dsd_fast/__init__.py, before anything heavy (torch takes seconds to
import): in the `dsd-fast` command's own process (`dsd-fast ...`, `python -m dsd_fast.cli
...`), a Ctrl-C during the package's imports prints `interrupted` and exits 130 instead of a
traceback through torch's import. A library user's process is left alone. Standard library
only, and outside dsd_fast/cli (whose import already needs torch); importing this module is
the whole effect."""
from __future__ import annotations

import os
import sys

EXIT_INTERRUPTED = 130          # 128 + SIGINT, what a shell reports for Ctrl-C


def _started_as_command() -> bool:
    """True in a process started as `dsd-fast ...` or `python -m dsd_fast.cli ...`."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if any(os.path.basename(a) == "dsd-fast" for a in argv[:2]):
        return True
    return any(a == "-m" and b == "dsd_fast.cli" for a, b in zip(argv, argv[1:])) \
        or "-mdsd_fast.cli" in argv


def quiet_interrupt_while_starting() -> None:
    """In the command's own process only: a Ctrl-C that escapes everything (the package's
    imports take seconds, before `main` can catch anything) prints `interrupted` and exits
    130 instead of a traceback through torch's import. A library user's process is left
    alone."""
    if not _started_as_command():
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            try:
                sys.stdout.flush()
                sys.stderr.write("interrupted\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            finally:
                os._exit(EXIT_INTERRUPTED)
        previous(kind, value, tb)
    sys.excepthook = hook


quiet_interrupt_while_starting()
