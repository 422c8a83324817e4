"""The per-sweep tables: ``provenance`` (one row per sweep, what made its numbers) and
``decisions`` (a sequential sweep's looks).

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


def decisions_table(sweep: str, trials: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """A sequential sweep's looks, replayed from its finished trials exactly as the sweep
    made them (analysis.confirmatory.sequential_looks): one row per look, hypothesis and arm, with
    the statistic, its boundaries and the decision. Empty for other sweeps."""
    if not isinstance(spec.get("seeds"), dict) or not spec.get("hypotheses") or not len(trials):
        return pd.DataFrame()
    from analysis.confirmatory import sequential_looks
    from analysis.stats import finished

    looks = sequential_looks(finished(trials), spec)
    return looks.assign(sweep=sweep)[["sweep", *looks.columns]] if len(looks) else looks


# --- in reports ---------------------------------------------------------------------

SHOWN = (("torch", "torch"), ("ray", "Ray"), ("optuna", "Optuna"), ("git_commit", "commit"),
         ("git_dirty", "dirty"), ("lock_drift", "drift from the lock"), ("cpu_model", "CPU"),
         ("cpu_avx512_bf16", "AVX512-BF16"), ("cpu_amx_tile", "AMX"), ("gpu_model", "GPU"),
         ("precision", "precision used"), ("device_kind", "device"), ("threads_per_trial", "threads/trial"),
         ("hostname", "host"), ("rerun_of", "rerun of"))
"""The fields a report shows (the table has them all): column, label."""


def load_provenance(root: str | Path, sweeps: list[str]) -> pd.DataFrame:
    """The provenance rows of these sweeps (an empty frame when none was gathered)."""
    from analysis.store import files

    paths = files(root, "provenance", sweeps)
    if not paths:
        return pd.DataFrame(columns=["sweep"])
    import pyarrow.parquet as pq

    return pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if column == "git_commit":
        return str(value)[:12]
    if column == "lock_drift":
        return str(value) or "none"
    return str(value)


def provenance_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the report's provenance table: one row per field, one column per sweep."""
    sweeps = [str(s) for s in df["sweep"]] if len(df) else []
    header = ["", *sweeps]
    rows = []
    for column, label in SHOWN:
        if column not in df.columns:
            continue
        rows.append([label, *(_cell(column, v) for v in df[column])])
    return header, rows


def provenance_markdown(df: pd.DataFrame) -> list[str]:
    """The markdown lines of a report's provenance section."""
    if not len(df):
        return ["No provenance recorded (sweeps made before it was, or not gathered)."]
    header, rows = provenance_rows(df)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append("All fields: `python -m analysis.sql \"SELECT * FROM provenance\"`.")
    return lines


def provenance_warnings(df: pd.DataFrame) -> list[str]:
    """One line per field that differs between the sweeps and can move numbers."""
    if len(df) < 2:
        return []
    recs = df.to_dict("records")
    out = []
    for field in provenance.NUMERIC_FIELDS:
        values = {str(r.get(field)) for r in recs}
        if len(values) > 1:
            detail = ", ".join(f"{r['sweep']}: {_cell(field, r.get(field))}" for r in recs)
            out.append(f"warning: the sweeps differ in {field} ({detail}); differences between them may come from it")
    return out
