"""The ways a `dsd-fast segment` run stops early, as exceptions (exit codes in run.py)."""
from __future__ import annotations

import signal

from ..io import WriteError as OutputError   # writing into the output folder failed: stop

__all__ = ["UsageError", "OutputError", "Interrupted"]


class UsageError(Exception):
    """The run cannot start (bad arguments, output folder in an input folder, ...): exit 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM arrived."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
