"""Errors that CLIs turn into one line on stderr and exit code 2.

Anything raised as a `UsageError` (or subclass) is the user's input being wrong:
a config typo, a missing data file, an unreadable checkpoint. The message must
say what is wrong and how to fix it, in one line.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2, nothing written."""


class ConfigError(UsageError):
    """A configuration value or key is invalid."""


class DataError(UsageError):
    """A data file is missing, truncated or corrupt."""


class CheckpointError(UsageError):
    """A checkpoint or export cannot be read or fails verification."""


class TrainingDiverged(RuntimeError):
    """A loss or weight became non-finite; names the step and the quantity."""

    def __init__(self, step: int, quantity: str, value: float | None = None):
        self.step = step
        self.quantity = quantity
        self.value = value
        detail = "" if value is None else f" (value {value})"
        super().__init__(f"training diverged at step {step}: {quantity} is not finite{detail}")
