"""Gather a sweep folder into Parquet tables: ``python -m analysis.gather SWEEP_DIR``.

``gather(sweep_dir, results_root)`` is also called by ``sweep.run`` at the end of a sweep.
It reads every trial folder (see ``analysis.ray_folder``), builds the tables described
in ``analysis/SCHEMA.md`` and writes them to ``ROOT/tables/<table>/<sweep>.parquet``,
replacing the files of an earlier gather of the same sweep (idempotent).
A corrupt or half-written trial folder is reported (logged, and listed by the CLI) and
left out; it never stops the gather.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import store
from analysis.arms import NOT_IDENTITY, arm_keys, arm_labels, is_seed_column  # noqa: F401 (re-exported)
from analysis.arms import arm_keys as _config_keys  # noqa: F401 (the old private name)
from analysis.provenance_table import decisions_table, provenance_table
from analysis.ray_folder import (
    Problem,
    TrialFolder,
    flatten,
    latest_checkpoint,
    read_experiment_state,
    read_trial,
    trial_dirs,
)
from analysis.schema import RAY_INTERNAL, RECORD_FILES, REQUIRED, SORT, TABLES
from analysis.trial_keys import finite_float, finite_int, strip_config, strip_trial
from neuroreg.config import ConfigError, config_with
from neuroreg.yamlio import read_yaml_file

log = logging.getLogger("analysis.gather")

@dataclass
class Gathered:
    sweep: str
    tables: dict[str, pd.DataFrame]
    problems: list[Problem]
    spec: dict[str, Any]
    """The sweep's sweep.yaml (empty when absent)."""
    config_columns: list[str]
    """The trials table's config-field columns (flattened, dotted names)."""


def default_results_root(sweep_dir: str | os.PathLike) -> Path:
    """The parent of the sweep's storage folder, as ``sweep.run`` uses: a sweep in
    results/sweeps/NAME has its tables in results/tables/, next to every other sweep
    stored in results/sweeps/."""
    return Path(sweep_dir).resolve().parent.parent


def collect(sweep_dir: str | os.PathLike) -> Gathered:
    """Read a sweep folder into DataFrames (no writing)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"SWEEP_DIR: {sweep_dir} is not a folder (expected Ray's STORAGE/NAME)")
    sweep = sweep_dir.resolve().name
    problems: list[Problem] = []
    states = read_experiment_state(sweep_dir, problems)
    trials: list[TrialFolder] = []
    for path in trial_dirs(sweep_dir):
        try:
            t = read_trial(path, states.get(path.name), problems)
        except Exception as e:  # noqa: BLE001 -- one broken folder must never stop a gather
            problems.append(Problem(path.name, f"{type(e).__name__}: {e}", True))
            t = None
        if t is not None:
            trials.append(t)
    seen = {t.path.name for t in trials} | {p.where for p in problems}
    for logdir, st in states.items():
        # A pending trial has no folder yet; any other missing folder was lost or deleted.
        if logdir not in seen and st.get("status") != "PENDING":
            problems.append(Problem(logdir, f"listed in the experiment state ({st.get('status')}) but no trial folder", True))
    if not trials and not problems:
        problems.append(Problem(sweep, "no trial folders (params.json / result.json) found", False))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        problems.append(Problem(sweep, f"duplicate trial ids {dup}; later folders dropped", False))
        keep, unique = set(), []
        # The folder the experiment state names wins: a trial restarted after its driver
        # died before saving the state gets a new folder (trial_<id>_<hex>) beside the stale one.
        for t in sorted(trials, key=lambda t: t.path.name not in states):
            if t.trial_id not in keep:
                keep.add(t.trial_id)
                unique.append(t)
        trials = unique

    spec = _read_spec(sweep_dir, problems)
    # The keys gather sets win: what a trial's files say about them is dropped and reported.
    configs: dict[int, dict[str, Any]] = {}
    for t in trials:
        try:
            configs[id(t)] = strip_config(t, _config_columns(t, spec), problems)
        except Exception as e:  # noqa: BLE001 -- one malformed trial must never stop a gather
            problems.append(Problem(t.path.name, f"config unreadable ({type(e).__name__}: {str(e)[:200]})", True))
    trials = [t for t in trials if id(t) in configs]
    config_cols = sorted({k for c in configs.values() for k in c})
    rows, kept = [], []
    for t in trials:
        try:
            strip_trial(t, set(config_cols), problems)
            rows.append(_trial_row(sweep, t, spec, configs[id(t)], problems))
            kept.append(t)
        except Exception as e:  # noqa: BLE001 -- one malformed trial must never stop a gather
            problems.append(Problem(t.path.name, f"cannot be tabled ({type(e).__name__}: {str(e)[:200]})", True))
    trials = kept
    config_cols = sorted({k for t in trials for k in configs[id(t)]})
    tables = {
        "trials": _trials_table(rows, config_cols),
        "epochs": _epochs_table(sweep, trials),
    }
    if trials:  # a folder without trials is no sweep to describe
        tables["provenance"] = provenance_table(sweep, sweep_dir, tables["trials"], problems)
    tables["decisions"] = decisions_table(sweep, tables["trials"], spec)
    for table, file in RECORD_FILES.items():
        stem = file.removesuffix(".jsonl")
        rows = [{"sweep": sweep, "trial_id": t.trial_id, **r} for t in trials for r in t.records.get(stem, [])]
        tables[table] = pd.DataFrame(rows)
    known = {f.removesuffix(".jsonl") for f in RECORD_FILES.values()}
    for t in trials:
        for stem in sorted(set(t.records) - known):
            problems.append(Problem(t.path.name, f"evaluation/{stem}.jsonl is no known record file; not gathered", False))
    for name, df in tables.items():
        if len(df):
            missing = [c for c in REQUIRED[name] if c not in df.columns]
            if missing:
                problems.append(Problem(sweep, f"table {name}: records lack columns {missing}; filled with nulls", False))
                for c in missing:
                    df[c] = None
            tables[name] = _order(df, name)
    return Gathered(sweep=sweep, tables=tables, problems=problems, spec=spec, config_columns=config_cols)


def gather(sweep_dir: str | os.PathLike, results_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Gather one sweep into ``results_root`` (default: see ``default_results_root``).

    Returns table name -> Parquet file written for this sweep. Tables without rows are
    not written (and an older file of this sweep for that table is removed).
    """
    return gather_report(sweep_dir, results_root)[0]


def gather_report(
    sweep_dir: str | os.PathLike, results_root: str | os.PathLike | None = None
) -> tuple[dict[str, Path], list[Problem]]:
    """``gather`` that also returns the problems met (each is logged as a warning too)."""
    g = collect(sweep_dir)
    root = Path(results_root) if results_root is not None else default_results_root(sweep_dir)
    for p in g.problems:
        log.warning("%s: %s", g.sweep, p)
    arrow: dict[str, Any] = {}
    for name in TABLES:
        df = g.tables.get(name, pd.DataFrame())
        if len(df) == 0:
            arrow[name] = None  # the table's file of an earlier gather goes with the switch
            continue
        extra = {"sweep_dir": str(Path(sweep_dir).resolve())}
        if name == "trials":
            extra["sweep_spec"] = g.spec
            extra["config_columns"] = g.config_columns
            extra["problems"] = [str(p) for p in g.problems]
        arrow[name] = store.to_arrow(df, name, g.sweep, extra)
    # All tables of the sweep switch at once: a gather killed midway leaves the old generation.
    return store.write_generation(root, g.sweep, arrow), g.problems


# --- tables ----------------------------------------------------------------------


def _read_spec(sweep_dir: Path, problems: list[Problem]) -> dict[str, Any]:
    path = sweep_dir / "sweep.yaml"
    if not path.exists():
        return {}
    try:
        spec = read_yaml_file(path, "sweep.yaml", "saved sweep file") or {}
        return spec if isinstance(spec, dict) else {}
    except ConfigError as e:
        problems.append(Problem("sweep.yaml", f"unreadable ({e.message})", False))
        return {}


def _config_columns(t: TrialFolder, spec: dict[str, Any]) -> dict[str, Any]:
    """The trial's config, flattened to dotted names.

    The trainer's resolved run/config.yaml is complete and wins. A trial that failed
    before writing it gets the sweep's base config (sweep.yaml) plus its sampled
    parameters from params.json, which ``sweep`` nests as ``{"params": {dotted: value},
    "__trial_index__": i}`` (the index picks the seed from the sweep's seed list).
    """
    if t.config is not None:
        return flatten(t.config)
    params = t.params
    sampled = dict(params["params"]) if isinstance(params.get("params"), dict) else {}
    seeds = spec.get("seeds")
    index = params.get("__trial_index__")
    if isinstance(seeds, list) and isinstance(index, int) and 0 <= index < len(seeds):
        sampled["train.seed"] = seeds[index]
    base = spec.get("base") if isinstance(spec.get("base"), dict) else {}
    try:
        flat = flatten(config_with(base, sampled))
    except ConfigError:  # a malformed base (a parameter under a plain value): merge flat, as before
        flat = {**flatten(base), **flatten(sampled)}
    for key, value in params.items():  # sweeps older than the {"params": ...} nesting
        if key != "params" and not key.startswith("__"):
            flat.update(flatten({key: value}))
    return flat


def _final_metrics(t: TrialFolder) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for r in t.results:
        merged.update(r)
    out = {k: v for k, v in flatten(merged, sep="/").items() if k.split("/")[0] not in RAY_INTERNAL}
    out.update(flatten(t.summary, sep="/"))
    return {k: v for k, v in out.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _trial_row(sweep: str, t: TrialFolder, spec: dict[str, Any], cfg: dict[str, Any],
               problems: list[Problem]) -> dict[str, Any]:
    """One trial's row: the gathered columns, then its config, then its metrics (which never
    replace either)."""
    last = t.results[-1] if t.results else {}
    wall = last.get("time_total_s")
    if wall is None and t.run_metrics:
        wall = sum(finite_float(m.get("epoch_s", 0.0)) for m in t.run_metrics)
    iterations = finite_int(last.get("training_iteration", 0))
    if iterations is None:
        problems.append(Problem(t.path.name, f"result.json: training_iteration {last['training_iteration']!r} is "
                                             "no finite integer; iterations left at 0", False))
    ckpt = latest_checkpoint(t.path)
    row = {
        "sweep": sweep,
        "trial_id": t.trial_id,
        "status": t.status,
        "error": t.error,
        "trial_dir": str(t.path),
        "checkpoint": str(ckpt) if ckpt else None,
        "wall_time_s": finite_float(wall) if wall is not None else math.nan,
        "iterations": iterations or 0,
        "n_epochs": len(_epoch_rows(t)),
        **_node_columns(t.results),
        **_round(t, spec),
    }
    for k, v in cfg.items():
        row[k] = v
    for k, v in _final_metrics(t).items():
        row.setdefault(k, v)
    return row


def _trials_table(rows: list[dict[str, Any]], config_cols: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if not len(df):
        return df
    labels = arm_labels(df, config_cols)
    df["arm"] = labels["arm"]
    df["condition"] = labels["condition"]
    df["baseline"] = labels["baseline"]
    keys = arm_keys(df, config_cols, ~labels["baseline"])
    df["arm_key"], df["condition_key"] = keys["arm_key"], keys["condition_key"]
    reg_data = df["regularizer.data.name"] if "regularizer.data.name" in df else pd.Series(None, index=df.index)
    data = df["data.name"] if "data.name" in df else pd.Series(None, index=df.index)
    df["reg_dataset"] = reg_data.where(reg_data.notna(), data)
    fixed = list(REQUIRED["trials"]) + ["condition", "baseline", "arm_key", "condition_key"]
    metric_cols = [c for c in df.columns if c not in fixed and c not in config_cols]
    return df[fixed + config_cols + sorted(metric_cols)]


def _round(t: TrialFolder, spec: dict[str, Any]) -> dict[str, Any]:
    """A sequential sweep's round of the trial: 1 for the first min seeds, then one per seed."""
    seeds, index = spec.get("seeds"), t.params.get("__trial_index__")
    if not isinstance(seeds, dict) or not isinstance(seeds.get("min"), int) or not isinstance(index, int):
        return {}
    return {"round": 1 if index < seeds["min"] else index - seeds["min"] + 2}


def _node_columns(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the trial ran: the node of its last report, and every node it reported from
    (more than one when it was retried on another node after losing its own)."""
    last = results[-1] if results else {}
    ids = list(dict.fromkeys(str(r["node_id"]) for r in results if r.get("node_id")))
    return {"node_id": last.get("node_id"), "node_host": last.get("hostname"), "node_ip": last.get("node_ip"),
            "node_ids": ",".join(ids) or None}


def _epoch_rows(t: TrialFolder) -> list[dict[str, Any]]:
    rows = [r for r in t.results if "epoch" in r]
    if not rows:
        rows = [r for r in t.run_metrics if "epoch" in r]
    by_epoch: dict[Any, dict[str, Any]] = {}
    for r in rows:
        # sweep's final report repeats the last epoch's metrics next to the evaluation
        # summary (it carries "evaluated"); it is no epoch of its own.
        if "evaluated" in r and r["epoch"] in by_epoch:
            continue
        by_epoch[r["epoch"]] = r  # a resumed trial reports some epochs again: the last wins
    return [by_epoch[e] for e in sorted(by_epoch, key=lambda e: (float(e) if _num(e) else math.inf, str(e)))]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _epochs_table(sweep: str, trials: list[TrialFolder]) -> pd.DataFrame:
    out = []
    keep_internal = {"training_iteration", "time_total_s"}
    for t in trials:
        rows = _epoch_rows(t)
        if not rows:
            continue
        # Final evaluation metrics ride on the last report; they belong to the trials table.
        final_only = set(t.summary)
        if len(rows) > 1:
            earlier = set().union(*(r.keys() for r in rows[:-1]))
            final_only |= set(rows[-1]) - earlier
        for r in rows:
            flat = flatten({k: v for k, v in r.items() if k not in final_only}, sep="/")
            rec = {"sweep": sweep, "trial_id": t.trial_id}
            for k, v in flat.items():
                if k.split("/")[0] in RAY_INTERNAL and k not in keep_internal:
                    continue
                rec[k] = v
            out.append(rec)
    return pd.DataFrame(out)


def _order(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if name in SORT:
        df = df.sort_values(list(SORT[name]), kind="stable")
    else:
        df = df.sort_values(["sweep", "trial_id"], kind="stable")
    front = [c for c in REQUIRED[name] if c in df.columns]
    rest = [c for c in df.columns if c not in front]
    return df[front + rest].reset_index(drop=True)


def fetch_sweep(uri: str, results_root: str | os.PathLike | None = None) -> Path:
    """A remote sweep folder copied (without checkpoints) to ROOT/remote/NAME, ROOT the
    given results root or ./results; gathering that copy writes ROOT/tables/."""
    from analysis.ray_folder import fetch_remote

    name = uri.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]
    root = Path(results_root) if results_root is not None else Path("results")
    dest, n = fetch_remote(uri, root.resolve() / "remote" / name)
    print(f"copied {n} files of {uri} to {dest}")
    return dest


# --- CLI -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.gather", description=__doc__.split("\n")[0].replace("``", ""))
    ap.add_argument("sweep_dir", help="a sweep folder (Ray's STORAGE/NAME), or its URI (s3://bucket/prefix/NAME): "
                    "copied without checkpoints to ROOT/remote/NAME, then gathered")
    ap.add_argument("--results", default=None, help="results root; tables go to ROOT/tables/ (default: the parent of SWEEP_DIR's parent, "
                    "e.g. results/ for results/sweeps/NAME)")
    args = ap.parse_args(argv)
    if "://" in args.sweep_dir and not args.sweep_dir.startswith("file://"):
        try:
            local = fetch_sweep(args.sweep_dir, args.results)
        except (OSError, ValueError) as e:  # no bucket, no credentials, nothing there
            print(f"error: SWEEP_DIR {args.sweep_dir}: {str(e).splitlines()[0][:300]}", file=sys.stderr)
            return 2
        args.sweep_dir, args.results = str(local), str(local.parent.parent)
    if not Path(args.sweep_dir).is_dir():
        print(f"error: SWEEP_DIR {args.sweep_dir} is not a folder (expected Ray's STORAGE/NAME)", file=sys.stderr)
        return 2
    written, problems = gather_report(args.sweep_dir, args.results)
    if not written:
        print(f"error: SWEEP_DIR {args.sweep_dir} holds no trial folders (params.json / result.json); "
              "give a sweep folder, e.g. results/sweeps/NAME", file=sys.stderr)
        return 2
    root = Path(args.results) if args.results else default_results_root(args.sweep_dir)
    print(f"gathered {Path(args.sweep_dir).resolve().name} into {store.tables_dir(root)}")
    for name, path in written.items():
        n = store.pq.read_metadata(path).num_rows
        print(f"  {name:<20} {n:>7} rows  {path}")
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
