"""SQL over the gathered tables: ``python -m analysis.sql "SELECT ..." [--results ROOT] [--out FILE]``.

One read-only view per table (trials, epochs, noise, adversarial, adversarial_summary,
transfer, boundary, clean, corruptions, frequency) holds the rows of every gathered sweep
(or of the --sweep ones); join a record table to trials with USING (sweep, trial_id).
``latest()`` is the name of the sweep gathered last (``WHERE sweep = latest()``), and
--latest keeps only that sweep. Column names with dots need double quotes:
"regularizer.alpha". Prints the result, or writes it to a .csv or .parquet file with
--out; --list shows the views and their columns. When a SELECT finds no rows, a hint on
stderr names each ``column = value`` (or ``IN``) comparison no row meets and the values
the column holds (analysis.sql_hint).
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
    latest_only,
    read_arrow,
    run_cli,
    write_out,
)
from analysis.schema import TABLES
from analysis.sql_hint import empty_result_hints


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

    The macro ``latest()`` returns the name of the sweep gathered last among ``sweeps``
    (``analysis.store.latest_sweep``; NULL when none), so a query can say
    ``WHERE sweep = latest()`` and still hold after the next sweep.
    """
    root = Path(root) if root is not None else default_root()
    con = duckdb.connect(":memory:")
    latest = store.latest_sweep(root, list(sweeps) if sweeps is not None else None)
    con.execute(f"CREATE TEMP MACRO latest() AS {_sql_string(latest)}")
    for table in tables or TABLES:
        data = read_arrow(table, root, sweeps)
        if isinstance(data, pd.DataFrame):
            data = _arrow_of_frame(data, table)
        # A registered Arrow table is a view: INSERT, UPDATE and DELETE on it fail.
        con.register(table, data)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _sql_string(text: str | None) -> str:
    """A SQL string literal (quotes doubled), or NULL."""
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


def _arrow_of_frame(df: pd.DataFrame, table: str) -> pa.Table:
    """pandas' fallback concatenation (types Arrow could not unify) as Arrow; mixed columns become strings."""
    if not len(df):  # a table no sweep wrote: typed columns rather than DuckDB's "NULL" type
        return pa.table({c: pa.array([], pa.string()) for c in df.columns})
    return store.to_arrow(df, table, "")


def referenced_tables(sql: str) -> list[str]:
    """The table names that occur as words in the SQL text: only those need reading."""
    words = {w.lower() for w in re.findall(r"[A-Za-z_]\w*", sql)}
    return [t for t in TABLES if t in words]


MAX_ROWS = 1_000_000
"""Most rows a result may hold in memory (printed or returned); larger ones are refused, or
streamed to --out batch by batch. Raise with --max-rows."""
BATCH_ROWS = 65536


class TooManyRows(ValueError):
    """A result larger than the row limit."""


def run(
    sql: str, root: str | os.PathLike | None = None, sweeps: Sequence[str] | None = None, max_rows: int | None = MAX_ROWS,
) -> pd.DataFrame:
    """The result of one SQL statement over the views, as a DataFrame (duckdb.Error on bad SQL).

    At most ``max_rows`` rows are fetched (DuckDB stops early under the LIMIT); a result
    with more is a TooManyRows error, never a MemoryError half-way.
    """
    return answer(sql, root, sweeps, max_rows, explain=False)[0]


def answer(
    sql: str, root: str | os.PathLike | None = None, sweeps: Sequence[str] | None = None, max_rows: int | None = MAX_ROWS,
    explain: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    """``run``, and with ``explain`` for an empty result the hints of ``analysis.sql_hint``
    (the values the compared columns hold); no hints otherwise."""
    views = referenced_tables(sql) or list(TABLES[:1])
    con = connect(root, sweeps, views)
    try:
        rel = con.sql(sql)
        if rel is None:
            return pd.DataFrame(), []
        df = rel.df() if max_rows is None else rel.limit(max_rows + 1).df()
        if max_rows is not None and len(df) > max_rows:
            raise TooManyRows(f"the result has more than {max_rows} rows; aggregate or add a LIMIT, write it "
                              "to a file with --out FILE.parquet (streamed, no row limit), or raise --max-rows")
        return df, (_hints(con, sql, views) if explain and not len(df) else [])
    finally:
        con.close()


def _hints(con: duckdb.DuckDBPyConnection, sql: str, views: list[str]) -> list[str]:
    try:
        return empty_result_hints(con, sql, views, con.execute("SELECT latest()").fetchone()[0])
    except (duckdb.Error, KeyError, TypeError, ValueError):  # DuckDB's tree in a shape not foreseen: no hint
        return []


def stream_to(sql: str, out: str, root: str | os.PathLike | None = None, sweeps: Sequence[str] | None = None) -> int:
    """Write the result of ``sql`` to ``out`` (.csv or .parquet) batch by batch, atomically; the row count."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from neuroreg.atomic import atomic_write

    path = check_out(out)
    con = connect(root, sweeps, referenced_tables(sql) or TABLES[:1])
    rows = 0
    try:
        reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)

        def write(f) -> None:
            nonlocal rows
            make = pcsv.CSVWriter if path.suffix == ".csv" else pq.ParquetWriter
            with make(f, reader.schema) as w:
                for batch in reader:
                    w.write_batch(batch)
                    rows += batch.num_rows

        atomic_write(path, write)
    finally:
        con.close()
    return rows


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
    ap.add_argument("--latest", action="store_true",
                    help="only the sweep gathered last (in SQL, latest() is its name in any case)")
    ap.add_argument("--out", default=None, help="write the result to a .csv or .parquet file instead of printing")
    ap.add_argument("--limit", type=int, default=None, help="print at most this many rows")
    ap.add_argument("--max-rows", type=int, default=MAX_ROWS,
                    help=f"refuse results of more rows, unless written with --out (default {MAX_ROWS})")
    ap.add_argument("--list", action="store_true", help="list the views, their row counts and columns, and latest()")
    args = ap.parse_args(argv)
    root = Path(args.results) if args.results else default_root()
    problem = check_results(root, args.sweep)
    if not problem and args.latest:
        args.sweep, problem = latest_only(root, args.sweep)
    if not problem and args.out:  # before the query runs
        try:
            check_out(args.out)
        except ValueError as e:
            problem = str(e)
    if not problem and args.max_rows < 1:
        problem = f"--max-rows must be >= 1, got {args.max_rows}"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    streamed = False
    try:
        if args.list:
            latest = store.latest_sweep(root, args.sweep)
            print(f"sweeps: {', '.join(args.sweep or store.sweeps(root))} (latest(): {latest})\n"
                  f"{describe(root, args.sweep)}")
            return 0
        if not args.query:
            print("error: give one SQL statement (or --list)", file=sys.stderr)
            return 2
        try:
            df, hints = answer(args.query, root, args.sweep, max_rows=args.max_rows)
        except TooManyRows:
            if not args.out:
                raise
            streamed = True
            rows = stream_to(args.query, args.out, root, args.sweep)
    except OSError as e:  # streaming to --out: a full disk; the earlier file is untouched (atomic)
        print(f"error: --out {args.out}: not written ({e.strerror or e}); any earlier file of that name is untouched",
              file=sys.stderr)
        return 2
    except duckdb.Error as e:
        print(f"error: SQL: {_one_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # a table file of another schema version
        print(f"error: {e}", file=sys.stderr)
        return 2
    if streamed:
        print(f"wrote {args.out} ({rows} rows, streamed)")
        return 0
    if args.out:
        rc = write_out(df, args.out)
    else:
        print(format_table(df.head(args.limit) if args.limit else df), flush=True)
        if args.limit and len(df) > args.limit:
            print(f"({len(df) - args.limit} more rows; --limit)")
        rc = 0
    for line in hints:  # after "(no rows)", which goes to stdout like every result
        print(f"hint: {line}", file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(run_cli(main))
