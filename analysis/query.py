"""Query the gathered tables: a Python API returning pandas DataFrames, and a CLI.

    python -m analysis.query noise --results ROOT --sweep alpha_th \\
        --where target=none,pixel_th --noise gaussian --level 0.08 \\
        --by arm --value accuracy --agg mean,sem,count

Python::

    from analysis.query import load, select, summarize
    df = load("noise", "ROOT")                      # joined with the trials' config columns
    df = select(df, ["regularizer.target == 'pixel_th'", "level=0.08"])
    summarize(df, "accuracy", by=["regularizer.alpha"], aggs=["mean", "sem", "count"])

Filters are either ``key=value`` (aliases such as ``alpha`` or ``seed`` allowed, numbers
compared with a tolerance, ``key=a,b`` for several values) or a pandas ``query``
expression in which dotted column names may be written bare
(``regularizer.alpha > 1 and level == 0.08``). ``--latest`` keeps only the sweep gathered
last. When the filters leave no row, the CLI prints ``(no rows)`` and, on stderr, which
filter found nothing and the values its column holds (``no_rows_hint``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from analysis import store
from analysis.filters import filter_columns, parse_filter
from analysis.schema import ALIASES, KEY, REQUIRED, TABLES
from neuroreg.atomic import atomic_write
from neuroreg.yamlio import parse_value_text

AGGREGATES = ("mean", "sem", "median", "count", "std", "min", "max")
TRIAL_COLUMNS = ("status", "arm", "condition", "baseline", "reg_dataset")
"""Columns of ``trials`` (next to the config columns) joined onto the other tables."""

SHORTHANDS = ("level", "noise", "norm", "epsilon", "severity", "corruption", "frequency", "kind",
              "status", "arm", "target", "alpha", "th", "seed", "epoch")
"""CLI options ``--level 0.08`` etc.: shorthand for ``--where level=0.08``."""


def default_root() -> Path:
    return Path(os.environ.get("NEUROREG_RESULTS", "results"))


def load(
    table: str,
    root: str | os.PathLike | None = None,
    sweeps: Sequence[str] | str | None = None,
    join_trials: bool = True,
) -> pd.DataFrame:
    """One table of the results root as a DataFrame (all sweeps, or the named ones).

    Record tables get the trials' config columns and ``status, arm, condition,
    baseline, reg_dataset`` joined on (sweep, trial_id), so they can be filtered and
    grouped by configuration directly.
    """
    root = Path(root) if root is not None else default_root()
    if isinstance(sweeps, str):
        sweeps = [sweeps]
    df = _read(table, root, list(sweeps) if sweeps is not None else None)
    # provenance and decisions are per sweep (no trial_id): nothing per trial to join on.
    if join_trials and table != "trials" and len(df) and "trial_id" in df.columns:
        trials = _read("trials", root, list(sweeps) if sweeps is not None else None)
        cols = list(KEY) + [c for c in config_columns(root, sweeps) + list(TRIAL_COLUMNS)
                            if c in trials.columns and c not in df.columns]
        df = df.merge(trials[list(dict.fromkeys(cols))], on=list(KEY), how="left")
    return df


def _read(table: str, root: Path, sweeps: list[str] | None) -> pd.DataFrame:
    tab = read_arrow(table, root, sweeps)
    return tab if isinstance(tab, pd.DataFrame) else tab.to_pandas()


def read_arrow(table: str, root: str | os.PathLike, sweeps: Sequence[str] | None = None) -> pa.Table | pd.DataFrame:
    """One table over the sweeps' files, as Arrow (a DataFrame where Arrow cannot unify the types).

    Every file's schema version is checked first (a stale file is refused, not misread).
    """
    for attempt in range(3):
        try:
            return _read_files(table, store.files(root, table, list(sweeps) if sweeps is not None else None))
        except FileNotFoundError:
            # A gather switched generations between listing and reading (a staged file
            # renamed into place): list the current generation again.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _read_files(table: str, paths: list[Path]) -> pa.Table | pd.DataFrame:
    if not paths:
        return pd.DataFrame(columns=list(REQUIRED[table]))
    for p in paths:
        store.check_version(p)
    # One pyarrow dataset over the per-sweep files. Sweeps may differ in columns (their
    # own config fields and metrics) and in a column's type (an int in one sweep, a float
    # in another), so the dataset schema is the permissive union of the files' schemas.
    schemas = [pq.read_schema(p).remove_metadata() for p in paths]
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
        return ds.dataset([str(p) for p in paths], schema=schema, format="parquet").to_table()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # Types that Arrow cannot unify (a string column in one sweep, numbers in
        # another): let pandas concatenate them as objects instead.
        return pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)


def config_columns(root: str | os.PathLike, sweeps: Iterable[str] | None = None) -> list[str]:
    """The config-field columns of the trials table (union over the sweeps)."""
    out: dict[str, None] = {}
    for p in store.files(root, "trials", list(sweeps) if sweeps is not None else None):
        for c in store.read_meta(p).get("config_columns", []):
            out[c] = None
    return list(out)


def sweep_meta(root: str | os.PathLike, sweep: str) -> dict:
    """The metadata stored with a sweep's trials table (sweep_spec, sweep_dir, problems)."""
    paths = store.files(root, "trials", [sweep])  # the current generation's file
    if not paths:
        raise FileNotFoundError(
            f"sweep: {sweep!r} is not gathered in {root}; gathered: {store.sweeps(root)}"
        )
    return store.read_meta(paths[0])


def resolve(name: str, columns: Iterable[str]) -> str:
    """A column name or alias -> the column name; a clear error when it does not exist."""
    cols = list(columns)
    if name in cols:
        return name
    if name in ALIASES and ALIASES[name] in cols:
        return ALIASES[name]
    hint = [c for c in cols if name.lower() in c.lower()][:8]
    raise KeyError(f"column {name!r} not found; similar: {hint or 'none'} (all columns: analysis.query TABLE --list)")


_KV = re.compile(r"^\s*([A-Za-z_][\w./-]*)\s*=(?!=)\s*(.*)$")


def select(df: pd.DataFrame, where: Sequence[str] | str | None) -> pd.DataFrame:
    """Rows matching every filter (``key=value[,value]`` or a comparison expression of
    analysis.filters: parsed, never evaluated as code)."""
    if not where:
        return df
    if isinstance(where, str):
        where = [where]
    mask = pd.Series(True, index=df.index)
    for item in where:
        mask &= _mask(df, item)
    return df[mask]


def _mask(df: pd.DataFrame, item: str) -> pd.Series:
    m = _KV.match(item)
    if m:
        return _equals(df, resolve(m.group(1), df.columns), m.group(2))
    return parse_filter(item, df, resolve)


def _filter_columns(df: pd.DataFrame, item: str) -> list[str]:
    m = _KV.match(item)
    return [resolve(m.group(1), df.columns)] if m else filter_columns(item, df.columns, resolve)


MAX_LISTED = 12
"""Most distinct values a no-rows hint lists (more numbers show as a range)."""


def present_values(series: pd.Series) -> str:
    """The distinct values of a column, short: ``0, 0.05, 0.1`` or ``40 values from 0.1 to 9.5``."""
    values = series.dropna().unique()
    if not len(values):
        return "only missing values"
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if numeric:
        values = np.sort(values.astype(float))
        if len(values) > MAX_LISTED:
            return f"{len(values)} values from {values[0]:g} to {values[-1]:g}"
        return ", ".join(f"{v:g}" for v in values)
    shown = sorted(str(v) for v in values)
    more = f", ... ({len(shown)} in all)" if len(shown) > MAX_LISTED else ""
    return ", ".join(shown[:MAX_LISTED]) + more


def no_rows_hint(df: pd.DataFrame, where: Sequence[str]) -> list[str]:
    """Why ``select(df, where)`` holds no row, one line per filter to blame: the values its
    column holds in the rows the other filters keep (or in the whole table).

    A filter is to blame when dropping it alone would give rows; when no single filter is
    (two filters that each miss), every filter that matches no row even on its own is.
    """
    if not len(df):
        return ["the table holds no rows in these sweeps (was its suite run?)"]
    masks = [_mask(df, w) for w in where]
    everything = pd.Series(True, index=df.index)
    lines = []
    for i, item in enumerate(where):
        others = everything.copy()
        for j, m in enumerate(masks):
            if j != i:
                others &= m
        if others.any():
            scope = f" where {' and '.join(w for j, w in enumerate(where) if j != i)}" if len(where) > 1 else ""
            lines += [f"{item} matches no row; {col} has {present_values(df.loc[others, col])}{scope}"
                      for col in _filter_columns(df, item)]
    if lines:
        return lines
    for item, m in zip(where, masks):
        if not m.any():
            lines += [f"{item} matches no row; {col} has {present_values(df[col])}"
                      for col in _filter_columns(df, item)]
    return lines or [f"each filter matches some rows, but no row meets all of: {'; '.join(where)}"]


def _equals(df: pd.DataFrame, col: str, text: str) -> pd.Series:
    # Strict safe YAML, nesting bounded; a bad value is a ConfigError (a ValueError) naming --where.
    values = [parse_value_text(v.strip(), f"--where {col}") if v.strip() else "" for v in text.split(",")]
    series = df[col]
    out = pd.Series(False, index=df.index)
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    for v in values:
        if numeric and isinstance(v, (int, float)) and not isinstance(v, bool):
            # Levels come from float arithmetic (0.08 may be stored as 0.08000000000000002).
            out |= pd.Series(np.isclose(series.astype(float), float(v), rtol=1e-9, atol=1e-12), index=df.index)
        elif v is None:
            out |= series.isna()
        else:
            out |= series.astype(str) == str(v)
    return out


def summarize(
    df: pd.DataFrame,
    value: str | Sequence[str],
    by: Sequence[str] | str = (),
    aggs: Sequence[str] = ("mean", "sem", "count"),
) -> pd.DataFrame:
    """Aggregates of value column(s) per group (NaN rows ignored, as pandas does).

    One value column gives columns named after the aggregates (``mean, sem, count``);
    several give ``<value>_<agg>``. ``sem`` is the standard error over the group's rows
    (seeds, when the other config columns are in ``by``) with ddof=1.
    """
    values = [value] if isinstance(value, str) else list(value)
    by = [by] if isinstance(by, str) else list(by)
    bad = [a for a in aggs if a not in AGGREGATES]
    if bad:
        raise ValueError(f"--agg: unknown aggregate(s) {bad}; choose from {AGGREGATES}")
    values = [resolve(v, df.columns) for v in values]
    by = [resolve(b, df.columns) for b in by]
    data = df[by + values].copy()
    for v in values:
        data[v] = pd.to_numeric(data[v], errors="coerce")
    if by:
        out = data.groupby(by, dropna=False, sort=True)[values].agg(list(aggs))
    else:
        out = data[values].agg(list(aggs)).unstack().to_frame().T
    out.columns = [a if len(values) == 1 else f"{v}_{a}" for v, a in out.columns]
    return out.reset_index() if by else out.reset_index(drop=True)


def query(
    table: str,
    root: str | os.PathLike | None = None,
    sweeps: Sequence[str] | None = None,
    where: Sequence[str] | None = None,
    by: Sequence[str] = (),
    value: Sequence[str] | str | None = None,
    aggs: Sequence[str] = ("mean", "sem", "count"),
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """load + select + (summarize when a value is given, else the selected columns)."""
    return shape(select(load(table, root, sweeps), where), by, value, aggs, columns)


def shape(
    df: pd.DataFrame,
    by: Sequence[str] = (),
    value: Sequence[str] | str | None = None,
    aggs: Sequence[str] = ("mean", "sem", "count"),
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Selected rows -> what ``query`` returns: aggregates, group counts or columns."""
    if value:
        return summarize(df, value, by, aggs)
    if by:
        return df.groupby([resolve(b, df.columns) for b in by], dropna=False).size().reset_index(name="count")
    if columns:
        df = df[[resolve(c, df.columns) for c in columns]]
    return df.reset_index(drop=True)


def check_out(path: str | os.PathLike) -> Path:
    """An --out file name the CLIs can write: ends in .csv or .parquet, not a folder."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out: {path} must end in .csv or .parquet")
    if path.is_dir():
        raise ValueError(f"--out: {path} is a folder; give a file name ending in .csv or .parquet")
    return path


def check_results(root: Path, sweeps: list[str] | None) -> str | None:
    """Why --results / --sweep cannot be read (a one-line error), or None."""
    if not store.tables_dir(root).is_dir():
        return f"--results {root} holds no tables/; run python -m analysis.gather SWEEP_DIR --results {root}"
    known = store.sweeps(root)
    missing = [s for s in sweeps or [] if s not in known]
    return f"--sweep {missing} not gathered in {root}; gathered: {known}" if missing else None


def latest_only(root: Path, sweeps: list[str] | None) -> tuple[list[str] | None, str | None]:
    """--latest: [the sweep gathered last] (of the --sweep ones, if given), or a one-line error."""
    name = store.latest_sweep(root, sweeps)
    if name is None:
        return sweeps, f"--latest: no sweep is gathered in {root}"
    return [name], None


def write(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    path = check_out(path)
    # Atomic: a full disk or an interrupt leaves any earlier file of that name as it was.
    if path.suffix == ".csv":
        return atomic_write(path, lambda f: df.to_csv(f, index=False))
    return atomic_write(path, lambda f: df.to_parquet(f, index=False))


def format_table(df: pd.DataFrame, digits: int = 4) -> str:
    if not len(df):
        return "(no rows)"
    return df.to_string(index=False, float_format=lambda x: f"{x:.{digits}g}")


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.query",
        description="Filter, group and aggregate the gathered Parquet tables.",
        epilog="example: python -m analysis.query noise --noise gaussian --level 0.08 --by arm --value accuracy",
    )
    ap.add_argument("table", choices=TABLES)
    ap.add_argument("--results", default=None, help="results root (default: $NEUROREG_RESULTS or ./results)")
    ap.add_argument("--sweep", action="append", default=None, help="only this sweep (repeatable)")
    ap.add_argument("--latest", action="store_true", help="only the sweep gathered last")
    ap.add_argument("--where", action="append", default=[], help="key=value[,value] or comparisons joined by and/or, e.g. \"alpha >= 1 and th < 0.5\" (repeatable)")
    for name in SHORTHANDS:
        ap.add_argument(f"--{name}", default=None, help=f"shorthand for --where {name}=VALUE")
    ap.add_argument("--by", default="", help="group-by columns, comma-separated")
    ap.add_argument("--value", default="", help="column(s) to aggregate, comma-separated")
    ap.add_argument("--agg", default="mean,sem,count", help=f"aggregates from {','.join(AGGREGATES)}")
    ap.add_argument("--columns", default="", help="columns to show (no aggregation)")
    ap.add_argument("--sort", default="", help="sort by these columns")
    ap.add_argument("--limit", type=int, default=None, help="print at most this many rows")
    ap.add_argument("--out", default=None, help="write the result to a .csv or .parquet file")
    ap.add_argument("--list", action="store_true", help="list the table's columns and the gathered sweeps")
    args = ap.parse_args(argv)
    root = Path(args.results) if args.results else default_root()
    problem = check_results(root, args.sweep)
    if not problem and args.latest:
        args.sweep, problem = latest_only(root, args.sweep)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.list:
            df = load(args.table, root, args.sweep)
            print(f"sweeps: {', '.join(store.sweeps(root))}\n{args.table}: {len(df)} rows")
            for c in df.columns:
                print(f"  {c}  ({df[c].dtype})")
            return 0
        where = list(args.where) + [f"{n}={getattr(args, n)}" for n in SHORTHANDS if getattr(args, n) is not None]
        loaded = load(args.table, root, args.sweep)
        selected = select(loaded, where)
        df = shape(selected, _csv(args.by), _csv(args.value), _csv(args.agg), _csv(args.columns))
        # An empty selection says which filter found nothing and what its column holds.
        hint = no_rows_hint(loaded, where) if where and not len(selected) else []
        if args.sort:
            df = df.sort_values([resolve(c, df.columns) for c in _csv(args.sort)])
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.out:
        rc = write_out(df, args.out)
    else:
        print(format_table(df.head(args.limit) if args.limit else df), flush=True)
        rc = 0
    for line in hint:  # after "(no rows)", which goes to stdout like every result
        print(f"hint: {line}", file=sys.stderr)
    return rc


def write_out(df: pd.DataFrame, out: str) -> int:
    """Write a CLI's result to --out: 0, or 2 with one line naming the file and why it could
    not be written (a full disk too)."""
    try:
        print(f"wrote {write(df, out)} ({len(df)} rows)")
        return 0
    except (ValueError, OSError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"error: --out {out}: not written ({why}); any earlier file of that name is untouched", file=sys.stderr)
        return 2


def run_cli(entry: Callable[[], int]) -> int:
    """A CLI's main, quiet when its output is piped into a reader that leaves early (``| head``)."""
    try:
        return entry()
    except BrokenPipeError:  # the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
