"""SQL over the gathered tables: ``python -m analysis.sql "SELECT ..." [--results ROOT] [--out FILE]``.

One read-only view per table (trials, epochs, noise, adversarial, adversarial_summary,
transfer, boundary, clean, corruptions, frequency) holds the rows of every gathered sweep
(or of the --sweep ones); join a record table to trials with USING (sweep, trial_id).
Column names with dots need double quotes: "regularizer.alpha". Prints the result, or
writes it to a .csv or .parquet file with --out; --list shows the views and their columns.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from analysis import store
from analysis.query import (
    check_out,
    check_results,
    default_root,
    format_table,
    read_arrow,
    run_cli,
    write_out,
)
from analysis.schema import TABLES


def connect(
    root: str | os.PathLike | None = None,
    sweeps: Sequence[str] | None = None,
    tables: Sequence[str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one read-only view per table, closed to the file system.

    The tables are read here, through the same schema-version check and type unification
    as ``analysis.query.load``, and handed to DuckDB as Arrow data. Afterwards file access
    is switched off and the setting locked, so user SQL can neither write (COPY ... TO,
    ATTACH, INSTALL) nor read anything else (read_csv('/etc/passwd')). Views over
    read_parquet would need the table files left readable, and DuckDB's allowed_paths
    then also lets COPY ... TO overwrite them.

    ``tables``: only these (default: all; a table no sweep wrote is an empty view).
    """
    root = Path(root) if root is not None else default_root()
    con = duckdb.connect(":memory:")
    for table in tables or TABLES:
        data = read_arrow(table, root, sweeps)
        if isinstance(data, pd.DataFrame):
            data = _arrow_of_frame(data, table)
        # A registered Arrow table is a view: INSERT, UPDATE and DELETE on it fail.
        con.register(table, data)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _arrow_of_frame(df: pd.DataFrame, table: str) -> pa.Table:
    """pandas' fallback concatenation (types Arrow could not unify) as Arrow; mixed columns become strings."""
    if not len(df):  # a table no sweep wrote: typed columns rather than DuckDB's "NULL" type
        return pa.table({c: pa.array([], pa.string()) for c in df.columns})
    return store.to_arrow(df, table, "")


def referenced_tables(sql: str) -> list[str]:
    """The table names that occur as words in the SQL text: only those need reading."""
    words = {w.lower() for w in re.findall(r"[A-Za-z_]\w*", sql)}
    return [t for t in TABLES if t in words]


def run(sql: str, root: str | os.PathLike | None = None, sweeps: Sequence[str] | None = None) -> pd.DataFrame:
    """The result of one SQL statement over the views, as a DataFrame (duckdb.Error on bad SQL)."""
    con = connect(root, sweeps, referenced_tables(sql) or TABLES[:1])
    try:
        rel = con.sql(sql)
        return rel.df() if rel is not None else pd.DataFrame()
    finally:
        con.close()


def describe(root: str | os.PathLike | None = None, sweeps: Sequence[str] | None = None) -> str:
    """Every view with its row count, columns and types (DuckDB's), as text."""
    con = connect(root, sweeps)
    try:
        lines = []
        for table in TABLES:
            n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            cols = con.execute(f"DESCRIBE {table}").fetchall()
            lines.append(f"{table}  ({n} rows)")
            lines += [f"  {name}  {typ}" for name, typ, *_ in cols]
        return "\n".join(lines)
    finally:
        con.close()


def _one_line(e: BaseException) -> str:
    """DuckDB's message without its multi-line context (LINE 1: ... and the caret)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.sql",
        description="Run SQL (DuckDB) over the gathered tables of all sweeps; one view per table.",
        epilog='example: python -m analysis.sql "SELECT arm, avg(clean_acc) FROM trials GROUP BY arm"',
    )
    ap.add_argument("query", nargs="?", help="one SQL statement (quote dotted columns: \"regularizer.alpha\")")
    ap.add_argument("--results", default=None, help="results root (default: $NEUROREG_RESULTS or ./results)")
    ap.add_argument("--sweep", action="append", default=None, help="only this sweep (repeatable)")
    ap.add_argument("--out", default=None, help="write the result to a .csv or .parquet file instead of printing")
    ap.add_argument("--limit", type=int, default=None, help="print at most this many rows")
    ap.add_argument("--list", action="store_true", help="list the views, their row counts and columns")
    args = ap.parse_args(argv)
    root = Path(args.results) if args.results else default_root()
    problem = check_results(root, args.sweep)
    if not problem and args.out:  # before the query runs
        try:
            check_out(args.out)
        except ValueError as e:
            problem = str(e)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.list:
            print(f"sweeps: {', '.join(args.sweep or store.sweeps(root))}\n{describe(root, args.sweep)}")
            return 0
        if not args.query:
            print("error: give one SQL statement (or --list)", file=sys.stderr)
            return 2
        df = run(args.query, root, args.sweep)
    except duckdb.Error as e:
        print(f"error: SQL: {_one_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # a table file of another schema version
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        return write_out(df, args.out)
    print(format_table(df.head(args.limit) if args.limit else df))
    if args.limit and len(df) > args.limit:
        print(f"({len(df) - args.limit} more rows; --limit)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
