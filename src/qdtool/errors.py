"""Errors a user can act on.

The CLI catches `QdtoolError` (and only it), prints its message on stderr and exits with
`exit_code`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class QdtoolError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""

    exit_code = 1


class UsageError(QdtoolError):
    """Bad invocation: a missing file, an unknown option value."""

    exit_code = 2


class DataError(QdtoolError):
    """The dataset is unusable as given."""


class ConfigError(QdtoolError):
    """A configuration value or combination is invalid."""


class ModelError(QdtoolError):
    """A model spec cannot be resolved or loaded."""


class TrainingError(QdtoolError):
    """Training stopped: NaN loss, out of memory, or a run directory conflict."""


class TrainingInterrupted(QdtoolError):
    """SIGINT/SIGTERM: a checkpoint was saved (or no step had run); the message says how to go on."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
