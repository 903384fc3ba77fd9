"""The package's own error types, at the bottom of the layers so any module may raise them."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint could not be loaded; the message says what was expected."""
