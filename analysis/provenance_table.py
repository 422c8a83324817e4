"""The ``provenance`` table: one row per sweep, what made its numbers.

From the sweep's ``provenance.json`` (written by ``sweep.run`` before the first trial:
versions, commit, lock file, CPU, GPU, host, threads per trial) plus what its trials
report they actually ran with: the precisions, layouts and device kinds used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.ray_folder import Problem
from neuroreg import provenance

MAX_BYTES = 1 << 20


def read_provenance(sweep_dir: Path, problems: list[Problem]) -> dict[str, Any]:
    path = Path(sweep_dir) / provenance.FILE_NAME
    if not path.exists():
        problems.append(Problem(provenance.FILE_NAME, "not recorded (a sweep made before provenance was); "
                                                     "the provenance row holds only what the trials report", False))
        return {}
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:  # a FIFO or device would hang a read
            raise ValueError("not a regular file of at most 1 MiB")
        rec = json.loads(path.read_bytes())
        if not isinstance(rec, dict):
            raise ValueError(f"holds a {type(rec).__name__}, not an object")
    except (OSError, ValueError) as e:
        problems.append(Problem(provenance.FILE_NAME, f"unreadable ({e}); left out", False))
        return {}
    # Only flat values: a record is data, and nested ones have no column.
    return {str(k): v for k, v in rec.items() if isinstance(v, (str, int, float, bool)) or v is None}


def _used(trials: pd.DataFrame, column: str) -> str | None:
    if column not in trials.columns:
        return None
    values = sorted({str(v) for v in trials[column].dropna()})
    return ",".join(values) if values else None


def provenance_table(sweep: str, sweep_dir: Path, trials: pd.DataFrame, problems: list[Problem]) -> pd.DataFrame:
    rec = read_provenance(sweep_dir, problems)
    rec.pop("sweep", None)  # the gathered name is the key, whatever the file says
    devices = trials["device"].dropna().map(lambda d: str(d).split(":")[0]) if "device" in trials.columns else None
    row = {
        "sweep": sweep,
        **rec,
        "precision": _used(trials, "precision"),
        "channels_last": _used(trials, "channels_last"),
        "device_kind": ",".join(sorted(set(devices))) if devices is not None and len(devices) else None,
        "n_trials": len(trials),
    }
    return pd.DataFrame([row])
