"""The Parquet store: ``ROOT/tables/<table>/<sweep>.parquet``, one file per table and sweep.

One file per sweep means re-gathering a sweep replaces exactly its own rows (by replacing
its files) and two sweeps gathered at the same time never write the same file. Every
file is written to a temporary name in the same folder and renamed into place, so a
reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
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
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        df = df.copy()
        for col in df.columns:
            if df[col].dtype == object:
                try:
                    pa.array(df[col], from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
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


def files(root: str | os.PathLike, table: str, sweeps: list[str] | None = None) -> list[Path]:
    if table not in TABLES:
        raise ValueError(f"table: unknown table {table!r}; choose one of {TABLES}")
    folder = tables_dir(root) / table
    if sweeps is not None:
        found = [p for p in (sweep_file(root, table, s) for s in sweeps) if p.exists() or p.is_symlink()]
    else:
        found = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    # A FIFO would hang the reader, a device never end: refused by name, never opened.
    return [_regular(p) for p in found]


def sweeps(root: str | os.PathLike) -> list[str]:
    """Names of the sweeps gathered into this root."""
    folder = tables_dir(root) / "trials"
    return sorted(unquote(p.stem) for p in folder.glob("*.parquet") if not p.name.startswith(".")) \
        if folder.is_dir() else []


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
