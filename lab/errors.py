"""The lab's error types, below everything that raises them.

A `LabError` is the user's to fix (a bad value, a missing file): the command-line entry points
print its one-line message and exit with status 2, without a traceback. Anything else is a bug.
"""

from __future__ import annotations


class LabError(Exception):
    """An error in what the user gave (config, data, files): its message says what, where and the fix."""


class ConfigError(LabError, ValueError):
    """A bad configuration value, reported before any compute."""


class DatasetError(LabError, RuntimeError):
    """A dataset file is missing or unreadable; the message names the file and the fix."""


class CheckpointError(LabError, RuntimeError):
    """A checkpoint that cannot be used (another configuration, not a lab checkpoint, damaged)."""

