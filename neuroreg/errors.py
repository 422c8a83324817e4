"""The errors every layer raises: a leaf module, so models, targets, data and the
evaluation can refuse bad input without importing the config tree."""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A configuration value is wrong. The message names the field and the fix."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        self.message = message
        super().__init__(f"{field_name}: {message}")

    def __reduce__(self):  # picklable across processes (Ray workers, multiprocessing)
        return (type(self), (self.field, self.message))


class CheckpointError(ConfigError):
    """A file that is not a readable neuroreg checkpoint (corrupt, foreign or hostile)."""

    def __init__(self, path: str | os.PathLike, why: str):
        super().__init__(str(path), f"not a neuroreg checkpoint: {why}")
        self.path, self.why = str(path), why

    def __reduce__(self):
        return (type(self), (self.path, self.why))
