"""The keys gather sets win over anything a trial's files say.

A trial folder is untrusted input: a record line of ``evaluation/noise.jsonl`` carrying
``"sweep"`` / ``"trial_id"``, a ``run/config.yaml`` with top-level ``sweep`` or ``status``,
or a ``result.json`` with ``arm`` would otherwise relabel rows (another sweep's rows in this
sweep's table), shadow the trial columns ``analysis.query.load`` joins on, or give duplicate
column names that abort the whole gather. Each such key is dropped and reported as one
Problem naming the trial and the file; the values gather computes stand.
"""

from __future__ import annotations

import math
from typing import Any

from analysis.ray_folder import Problem, TrialFolder
from analysis.schema import GATHERED_TRIAL_COLUMNS, KEY

RESULT_SOURCES = frozenset({"trial_id", "node_id", "node_ip", "checkpoint"})
"""Gathered columns whose value Ray or the trainer legitimately reports in result.json /
run/metrics.jsonl (Ray's trial_id and node, the trainer's checkpoint path): read, never a forgery."""

FILE_KEYS = frozenset(KEY) | GATHERED_TRIAL_COLUMNS
"""Columns a trial's own files may not set: the keys and every column gather computes."""


def _report(t: TrialFolder, file: str, keys: set[str], problems: list[Problem]) -> None:
    if keys:
        problems.append(Problem(t.path.name, f"{file} sets {sorted(keys)}, which gather sets itself; "
                                             "ignored (the gathered values stand)", False))


def _strip(rows: list[dict[str, Any]], reserved: frozenset[str] | set[str]) -> tuple[list[dict[str, Any]], set[str]]:
    found: set[str] = set()
    out = []
    for r in rows:
        bad = reserved.intersection(r)
        if bad:
            found |= bad
            r = {k: v for k, v in r.items() if k not in bad}
        out.append(r)
    return out, found


def strip_config(t: TrialFolder, cfg: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """A trial's flattened config without the columns gather sets (reported once)."""
    bad = FILE_KEYS.intersection(cfg)
    _report(t, "run/config.yaml" if t.config is not None else "params.json", set(bad), problems)
    return {k: v for k, v in cfg.items() if k not in bad}


def strip_trial(t: TrialFolder, config_columns: set[str], problems: list[Problem]) -> None:
    """Drop, in place, every key of the trial's reports, summary and records that would set a
    gathered column; one Problem per file that tried."""
    reserved = FILE_KEYS - RESULT_SOURCES
    t.results, found = _strip(t.results, reserved)
    _report(t, "result.json", found, problems)
    t.run_metrics, found = _strip(t.run_metrics, reserved)
    _report(t, "run/metrics.jsonl", found, problems)
    (t.summary,), found = _strip([t.summary], FILE_KEYS)
    _report(t, "evaluation/summary.json", found, problems)
    # A record table gets the trial's config and labels joined on (analysis.query.load):
    # a record must not carry those names either.
    record_reserved = FILE_KEYS | config_columns
    for stem in list(t.records):
        t.records[stem], found = _strip(t.records[stem], record_reserved)
        _report(t, f"evaluation/{stem}.jsonl", found, problems)


def finite_int(value: Any) -> int | None:
    """An integer count from a results file, or None for anything else (1e400 reads as inf,
    NaN, a string, a bool, a float with a fraction)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def finite_float(value: Any) -> float:
    """A float from a results file; NaN for what is no number (a string, a bool, None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    try:
        return float(value)
    except OverflowError:  # an integer beyond float's range
        return math.inf if value > 0 else -math.inf
