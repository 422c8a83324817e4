"""The Parquet store: ``ROOT/tables/<table>/<sweep>.parquet``, one file per table and sweep.

One file per sweep means re-gathering a sweep replaces exactly its own rows (by replacing
its files) and two sweeps gathered at the same time never write the same file.

A sweep's tables are one generation: ``write_generation`` first writes every new file
beside the old ones (hidden ``.<sweep>.parquet.next`` names that no reader lists), then
commits by writing one small journal, ``tables/.pending/<sweep>.json`` (atomically: a temp
file renamed into place), then renames the staged files over the old ones and removes the
journal. The readers here (``files``, ``sweeps``) follow the journal while it exists: a
gather killed before the commit leaves the previous generation as it was (the staged files
are ignored and replaced by the next gather), one killed after it reads as the new
generation (staged files where the rename has not happened yet), and the next gather of
the sweep finishes the switch. No reader ever sees a mix of two generations.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import META_SWEEP, META_TABLE, META_VERSION, SCHEMA_VERSION, TABLES
from neuroreg.atomic import atomic_write
from neuroreg.safe_io import is_regular


def tables_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "tables"


def sweep_file(root: str | os.PathLike, table: str, sweep: str) -> Path:
    # quote() keeps the file name safe for any sweep name and reversible (see sweeps()).
    return tables_dir(root) / table / f"{quote(sweep, safe='-_.=')}.parquet"


def to_arrow(df: pd.DataFrame, table: str, sweep: str, extra_meta: dict[str, Any] | None = None) -> pa.Table:
    """DataFrame -> Arrow table with the schema-version metadata.

    Object columns mixing strings with numbers (possible in free-form record fields)
    are stored as strings rather than failing the whole gather.
    """
    try:
        tab = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        df = df.copy()
        for col in df.columns:
            if df[col].dtype == object:
                try:
                    pa.array(df[col], from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                    df[col] = df[col].map(lambda v: None if v is None or v != v else str(v))
        tab = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(tab.schema.metadata or {})
    meta[META_VERSION] = str(SCHEMA_VERSION).encode()
    meta[META_TABLE] = table.encode()
    meta[META_SWEEP] = sweep.encode()
    for key, value in (extra_meta or {}).items():
        meta[f"neuroreg.{key}".encode()] = json.dumps(value, sort_keys=True, default=str).encode()
    return tab.replace_schema_metadata(meta)


def write_atomic(tab: pa.Table, path: Path) -> Path:
    return atomic_write(path, lambda f: pq.write_table(tab, f))


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


PENDING = ".pending"
"""Folder of the switch journals under tables/ (one ``<sweep>.json`` while a switch is under way)."""


def staged_file(root: str | os.PathLike, table: str, sweep: str) -> Path:
    """Where the next generation's file of a table waits for the switch (no reader lists it)."""
    path = sweep_file(root, table, sweep)
    return path.with_name(f".{path.name}.next")


def _journal(root: str | os.PathLike, sweep: str) -> Path:
    return tables_dir(root) / PENDING / f"{quote(sweep, safe='-_.=')}.json"


def _hook(point: str) -> None:
    """Tests kill a gather at a chosen point of the switch (NEUROREG_TEST_GATHER_KILL=staged|committed|switched)."""
    if os.environ.get("NEUROREG_TEST_GATHER_KILL") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def write_generation(root: str | os.PathLike, sweep: str, tables: dict[str, pa.Table | None]) -> dict[str, Path]:
    """Replace all of a sweep's tables as one generation: ``tables`` maps every table name to
    its new Arrow table, or None to remove that table's file. Returns table -> file written."""
    finish_switch(root, sweep)  # an earlier gather killed mid-switch: complete it first
    for name in TABLES:  # files staged by a gather killed before its commit: never committed
        staged_file(root, name, sweep).unlink(missing_ok=True)
    staged = []
    for name, tab in tables.items():
        if tab is not None:
            write_atomic(tab, staged_file(root, name, sweep))
            staged.append(name)
            _hook("staged")
    plan = {name: "write" if tab is not None else "remove" for name, tab in tables.items()
            if tab is not None or sweep_file(root, name, sweep).exists()}
    if not plan:
        return {}  # nothing to write and nothing to remove: the root stays untouched
    atomic_write(_journal(root, sweep), lambda f: f.write(json.dumps({"sweep": sweep, "tables": plan}).encode()))
    _hook("committed")
    finish_switch(root, sweep)
    return {name: sweep_file(root, name, sweep) for name in staged}


def finish_switch(root: str | os.PathLike, sweep: str) -> None:
    """Complete a committed switch: staged files renamed over the old ones, removed tables
    deleted, then the journal removed. Without a journal there is nothing to do."""
    journal = _journal(root, sweep)
    plan = _read_journal(journal)
    if plan is None:
        return
    for name, action in plan.items():
        final, staged = sweep_file(root, name, sweep), staged_file(root, name, sweep)
        if action == "write" and staged.exists():
            os.replace(staged, final)
            _hook("switched")
        elif action == "remove":
            final.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)


def _read_journal(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(_regular(path).read_text())
        plan = data["tables"]
        if isinstance(plan, dict) and all(k in TABLES and v in ("write", "remove") for k, v in plan.items()):
            return plan
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise ValueError(f"--results: the switch journal {path} is unreadable; re-gather sweep {path.stem!r} "
                     "(python -m analysis.gather SWEEP_DIR) after removing it")


def _pending(root: str | os.PathLike) -> dict[str, dict[str, str]]:
    """sweep -> {table: write|remove} of every committed, unfinished switch under this root."""
    folder = tables_dir(root) / PENDING
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.glob("*.json")):
        plan = _read_journal(path)
        if plan is not None:
            out[unquote(path.stem)] = plan
    return out


def _current(root: str | os.PathLike, table: str, sweep: str, pending: dict[str, dict[str, str]]) -> Path | None:
    """The current generation's file of one table and sweep, or None."""
    final = sweep_file(root, table, sweep)
    action = pending.get(sweep, {}).get(table)
    if action == "remove":
        return None
    if action == "write":
        staged = staged_file(root, table, sweep)
        if staged.exists():  # committed, not renamed yet
            return staged
    return final if final.exists() or final.is_symlink() else None


def files(root: str | os.PathLike, table: str, sweeps: list[str] | None = None) -> list[Path]:
    """The current generation's files of a table (all sweeps, or the named ones)."""
    if table not in TABLES:
        raise ValueError(f"table: unknown table {table!r}; choose one of {TABLES}")
    pending = _pending(root)
    if sweeps is None:
        folder = tables_dir(root) / table
        names = {unquote(p.stem) for p in folder.glob("*.parquet") if not p.name.startswith(".")} \
            if folder.is_dir() else set()
        sweeps = sorted(names | {s for s, plan in pending.items() if plan.get(table) == "write"},
                        key=lambda s: sweep_file(root, table, s).name)
    found = [p for p in (_current(root, table, s, pending) for s in sweeps) if p is not None]
    # A FIFO would hang the reader, a device never end: refused by name, never opened.
    return [_regular(p) for p in found]


def sweeps(root: str | os.PathLike) -> list[str]:
    """Names of the sweeps gathered into this root (their current generation has a trials table)."""
    folder = tables_dir(root) / "trials"
    names = {unquote(p.stem) for p in folder.glob("*.parquet") if not p.name.startswith(".")} \
        if folder.is_dir() else set()
    for sweep, plan in _pending(root).items():
        if plan.get("trials") == "write":
            names.add(sweep)
        elif plan.get("trials") == "remove":
            names.discard(sweep)
    return sorted(names)


def latest_sweep(root: str | os.PathLike, among: list[str] | None = None) -> str | None:
    """The sweep gathered last (its current trials file modified last; ties: the greater
    name), of all gathered sweeps or of ``among``; None when there is none.

    ``sweep.run`` gathers at its end, so after a sweep this is that sweep. Gathering an
    older sweep again makes it the latest; copying a results folder without keeping
    modification times (``cp -r`` rather than ``cp -a`` or rsync -a) loses the order.
    """
    found = [(path.stat().st_mtime_ns, name) for name in (among if among is not None else sweeps(root))
             for path in files(root, "trials", [name])]
    return max(found)[1] if found else None


def _regular(path: Path) -> Path:
    if not is_regular(path):
        raise ValueError(f"--results: {path} is not a regular file (a FIFO, device, socket, folder or broken "
                         "link); remove it and re-gather that sweep")
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """The neuroreg.* metadata of one file, decoded."""
    meta = pq.read_schema(_regular(path)).metadata or {}
    out: dict[str, Any] = {}
    for k, v in meta.items():
        key = k.decode()
        if not key.startswith("neuroreg."):
            continue
        name = key[len("neuroreg."):]
        text = v.decode()
        try:
            out[name] = json.loads(text) if name not in ("table", "sweep") else text
        except ValueError:
            out[name] = text
    return out


def check_version(path: Path) -> None:
    meta = pq.read_schema(_regular(path)).metadata or {}
    version = meta.get(META_VERSION)
    if version is None or int(version) != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema version {version and version.decode()} != {SCHEMA_VERSION}; "
            "re-gather this sweep with `python -m analysis.gather SWEEP_DIR`"
        )
