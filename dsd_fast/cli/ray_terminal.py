"""What a `--ray` run prints on the terminal: the command's own lines, none of Ray's raw ones.

Ray writes to the driver's terminal from three places:

  Ray's Python loggers ("ray", "ray.data"): the token-authentication notice while a local
      instance starts, "Progress bars disabled", an operator's failure, in Ray's format (time,
      level, file:line; several lines for an error). Inside `RayTerminal` their terminal
      handlers are replaced by one of ours: with -q nothing; otherwise a Ray warning is one
      `warning: ray: ...` line, once, less the notices about what this command chose (its
      own progress bar, the local instance it starts and stops). Ray's errors are not
      printed: an error that stops the run reaches the user as the run's own one line
      (`error: ...; stopped`, run_ray._collect). Ray's log files still get every record.
  The raylet's notices ("A worker died or was killed ...", "Task ... will be retried"), which
      the driver's listener thread prints to stdout in yellow: with -q nothing; otherwise a
      dead worker is one `warning:` line, other notices one `warning: ray: ...` line each.
  Ray's C++ core worker, whose ERROR lines go to the driver's file descriptor 2, out of
      Python's reach: run_ray.py does not trigger the one Ray Data's actor pools would (its
      workers are tasks, not actors; see its docstring).

Everything changed is put back when the block ends (segment_files may run in a user's
Python session).
"""
from __future__ import annotations

import logging

from .console import warning_line

RAY_LOGGERS = ("ray", "ray.data")
# Ray notices about what this command chose, with nothing in them for its user to do.
OWN_CHOICES = ("Progress bars disabled",            # the command draws its own bar
               "Token authentication is enabled")   # the local instance the command starts
WORKER_DIED = ("a Ray worker process died (killed, or out of memory); Ray starts another "
               "and runs its images again")


def _to_terminal(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and \
        not isinstance(handler, logging.FileHandler)


class _OneLineHandler(logging.Handler):
    """Ray's logger records for the terminal: a warning as one `warning: ray: ...` line."""

    def __init__(self, quiet: bool, shown: set):
        super().__init__(logging.WARNING)
        self.quiet, self.shown = quiet, shown

    def emit(self, record: logging.LogRecord) -> None:
        if self.quiet or record.levelno >= logging.ERROR:
            return
        try:
            text = record.getMessage()
        except Exception:                   # a record Ray formats wrongly: not worth a crash
            return
        if not any(choice in text for choice in OWN_CHOICES):
            warning_line(f"ray: {text}", self.shown)


class RayTerminal:
    """Context manager: inside it, Ray's loggers and raylet notices print as described in
    the module docstring. `init_kwargs()` are ray.init's logging arguments that keep it so
    (ray.init with configure_logging=False drops the "ray" logger's handlers, ours too, and
    the notices it then logs go to Python's last-resort handler, raw)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.shown: set = set()
        self.handler = _OneLineHandler(quiet, self.shown)
        self._removed: list[tuple[logging.Logger, logging.Handler]] = []
        self._patched = None

    def init_kwargs(self) -> dict:
        return dict(configure_logging=True, logging_level=logging.getLogger("ray").level)

    def __enter__(self) -> "RayTerminal":
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            for h in list(logger.handlers):
                if _to_terminal(h):
                    logger.removeHandler(h)
                    self._removed.append((logger, h))
            logger.addHandler(self.handler)
        try:
            import ray._private.worker as ray_worker
        except ImportError:
            return self
        original = getattr(ray_worker, "print_to_stdstream", None)
        if original is not None:
            # listen_error_messages (the driver's notice thread) looks this name up per call
            def print_to_stdstream(data, *args, **kwargs):
                if data.get("pid") != "raylet":
                    return original(data, *args, **kwargs)
                self.raylet_notice(data.get("lines") or [])
            ray_worker.print_to_stdstream = print_to_stdstream
            self._patched = (ray_worker, original)
        return self

    def raylet_notice(self, notices) -> None:
        """The raylet's notices, as the module docstring says."""
        if self.quiet:
            return
        for text in notices:
            text = str(text)
            if "worker died or was killed" in text:
                warning_line(WORKER_DIED, self.shown)
            elif "will be retried" not in text:        # a retry: the death said it already
                warning_line(f"ray: {text}", self.shown)

    def __exit__(self, *exc) -> None:
        for name in RAY_LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        for logger, h in self._removed:
            logger.addHandler(h)
        self._removed.clear()
        if self._patched is not None:
            module, original = self._patched
            module.print_to_stdstream = original
            self._patched = None
