"""The metric names a report may ask for: the numeric metric columns of the gathered trials.

``analysis.report --metric NAME`` and ``--pareto NAME:max,...`` name columns of the trials
table; an unknown name is refused (exit 2) with the known ones listed, instead of a report
that silently leaves the metric out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from analysis import store

NOT_METRICS = frozenset({"round"})
"""Numeric columns gather computes that measure nothing (a sequential sweep's round)."""


def known_metrics(root: str | os.PathLike, sweeps: Iterable[str] | None = None) -> list[str]:
    """Numeric metric columns of the trials table of these sweeps (all gathered sweeps when None):
    every numeric column that is no config field (the trial's wall time and epochs count too)."""
    out: dict[str, None] = {}
    for path in store.files(root, "trials", list(sweeps) if sweeps is not None else None):
        config = set(store.read_meta(path).get("config_columns", []))
        for f in pq.read_schema(path):
            numeric = pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
            if numeric and f.name not in config and f.name not in NOT_METRICS:
                out[f.name] = None
    return sorted(out)


def metric_problem(
    root: str | os.PathLike,
    sweeps: Iterable[str] | None,
    metric: str | None = None,
    objectives: Mapping[str, str] | None = None,
) -> str | None:
    """Why ``--metric`` / ``--pareto`` cannot be reported on these sweeps (one line naming the
    flag, the name and the known metrics), or None when every name is a known metric."""
    asked = [("--metric", metric)] if metric else []
    asked += [("--pareto", name) for name in (objectives or {})]
    if not asked:
        return None
    known = known_metrics(root, sweeps)
    for flag, name in asked:
        if name not in known:
            close = [m for m in known if name and (name.lower() in m.lower() or m.lower() in name.lower())][:8]
            hint = f"similar: {close}; " if close else ""
            return (f"{flag}: {name!r} is no metric of the gathered trials; {hint}known metrics: "
                    f"{', '.join(known) or 'none (gather the sweep first)'}")
    return None
