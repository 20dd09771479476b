"""One error hierarchy for the whole project.

Every error a user can cause is a :class:`DeepSADError`; the CLI prints its message as one line and
exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DeepSADError(Exception):
    """Base class of every error that a user's input or environment can cause."""


class ConfigError(DeepSADError):
    """A configuration value is invalid (out of range, inconsistent, unknown name)."""


class DataError(DeepSADError):
    """A data set is missing, corrupt, or cannot satisfy the requested protocol."""


class CheckpointError(DeepSADError):
    """A checkpoint is missing, malformed, or of an unsupported format."""


class IntegrityError(CheckpointError):
    """Stored bytes do not match their recorded checksum or size."""


class StorageError(DeepSADError):
    """A storage location cannot be read or written."""
