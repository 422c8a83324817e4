"""Output folders checked before any work: a folder (not a file) that can be written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from neuroreg.errors import ConfigError


def check_output_folder(path: str | os.PathLike, field: str) -> None:
    """Refuse ``path`` as an output folder unless it is, or can become, a writable folder.

    Probes with a temporary folder in the nearest existing ancestor, removed at once:
    permission bits say nothing for root, and only a real attempt sees a read-only or
    pseudo file system (/proc, a read-only mount). Nothing is left behind either way.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(field, f"{p} is a file; give a folder")
    ancestor = p
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(field, f"{ancestor} (part of {p}) is a file, not a folder; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".neuroreg-probe-", dir=ancestor))
    except OSError as e:
        raise ConfigError(field, f"cannot write under {ancestor} ({e.strerror or e}); choose a writable folder") from None
