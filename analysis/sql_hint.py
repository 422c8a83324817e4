"""Why an SQL query found no rows: the values the compared columns actually hold.

When a SELECT statement's result is empty, DuckDB's own parser (``json_serialize_sql``) lists its
comparisons of a column with constants (``col = c``, ``c = col``, ``col IN (c, ...)``,
anywhere in the statement). For each whose column is a column of a view the statement
reads, and whose constants occur in none of that column's rows, one line says so and lists
the values present. Each line is a fact about the data, true whatever the rest of the
query does; it is shown only because the result is empty. No SQL text is built from the
user's statement: column names are quoted identifiers of the views, values come back as data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import duckdb
import pandas as pd

from analysis.query import present_values

MAX_HINTS = 5
DISTINCT_LIMIT = 10_000
"""Most distinct values fetched per column (enough to decide and to list a range)."""


def _nodes(tree: Any) -> Iterator[dict]:
    if isinstance(tree, dict):
        yield tree
        for v in tree.values():
            yield from _nodes(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _nodes(v)


def _constant(node: dict) -> tuple[bool, Any]:
    """(is a non-NULL constant, its value as text or number) across DuckDB's serialization formats."""
    if node.get("class") != "CONSTANT":
        return False, None
    lit = node.get("literal")
    if isinstance(lit, dict) and "text" in lit:  # DuckDB 2: {"kind": "NUMERIC" | "STRING", "text": ...}
        if lit.get("kind") == "NUMERIC":
            try:
                return True, float(lit["text"])
            except (TypeError, ValueError):
                return False, None
        return (lit.get("kind") == "STRING"), lit["text"]
    value = node.get("value")
    if isinstance(value, dict) and not value.get("is_null", True) and "value" in value:  # DuckDB 1.x
        return True, value["value"]
    return False, None


def comparisons(sql: str, con: duckdb.DuckDBPyConnection) -> tuple[list[tuple[list[str], list[Any], str]], dict[str, str]]:
    """([(column path, constants, as written)], {alias or name: view}) of one statement; empty when it does not parse."""
    tree = _parse(sql, con)
    if tree is None:
        return [], {}
    found: list[tuple[list[str], list[Any], str]] = []
    tables: dict[str, str] = {}
    for node in _nodes(tree):
        if node.get("type") == "BASE_TABLE" and node.get("table_name"):
            tables.setdefault(node["table_name"], node["table_name"])
            if node.get("alias"):
                tables[node["alias"]] = node["table_name"]
        kind = node.get("type")
        if kind == "COMPARE_EQUAL":
            sides = [node.get("left") or {}, node.get("right") or {}]
            for col, const in (sides, sides[::-1]):
                ok, value = _constant(const)
                if col.get("class") == "COLUMN_REF" and ok:
                    found.append((list(col["column_names"]), [value], _written(sql, node)))
        elif kind == "COMPARE_IN":
            kids = node.get("children") or []
            consts = [_constant(k) for k in kids[1:]]
            if kids and kids[0].get("class") == "COLUMN_REF" and consts and all(ok for ok, _ in consts):
                found.append((list(kids[0]["column_names"]), [v for _, v in consts], _written(sql, node, kids[0])))
    return found, tables


def _parse(sql: str, con: duckdb.DuckDBPyConnection) -> dict | None:
    """DuckDB's syntax tree of one statement; None for other kinds (PIVOT does not serialize)."""
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    except (duckdb.Error, TypeError, ValueError):
        return None
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        return None
    return tree["statements"][0]


def _written(sql: str, node: dict, start: dict | None = None) -> str:
    """The comparison as the user wrote it (DuckDB's source location, in UTF-8 bytes), else a placeholder."""
    try:
        first = (start or node)["query_location"]
        end = node["query_location"] + node["query_location_length"]
        if start is not None:  # IN: the node's location starts at "IN"; its length runs to the list's end
            end = max(end, first)
        text = sql.encode()[first:end].decode(errors="replace")
        return " ".join(text.split()) or "a comparison"
    except (KeyError, TypeError):
        return "a comparison"


def _holds(values: pd.Series, wanted: list[Any]) -> bool:
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    for w in wanted:
        if numeric:
            try:
                w = float(w)
            except (TypeError, ValueError):
                return True  # not a number: DuckDB decides; no hint
            if any(math.isclose(float(v), w, rel_tol=1e-9, abs_tol=1e-12) for v in values.dropna()):
                return True
        elif not (pd.api.types.is_string_dtype(values) or pd.api.types.is_object_dtype(values)):
            return True  # booleans, times, lists: their text forms differ from SQL's; no hint
        elif any(str(v) == str(w) for v in values.dropna()):
            return True
    return False


def empty_result_hints(con: duckdb.DuckDBPyConnection, sql: str, views: list[str], latest: str | None) -> list[str]:
    """Lines for an empty result of ``sql`` over ``views`` (see the module docstring)."""
    found, tables = comparisons(sql, con)
    columns = {v: [r[0] for r in con.execute(f"DESCRIBE {v}").fetchall()] for v in views}
    lines: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for path, wanted, written in found:
        name = path[-1]
        qualifier = path[-2] if len(path) > 1 else None
        candidates = [tables[qualifier]] if qualifier in tables else [t for t in dict.fromkeys(tables.values())]
        view = next((t for t in candidates if t in columns and name in columns[t]), None)
        if view is None or (view, name, written) in seen:
            continue
        seen.add((view, name, written))
        quoted = '"' + name.replace('"', '""') + '"'
        present = con.execute(f"SELECT DISTINCT {quoted} AS v FROM {view} LIMIT {DISTINCT_LIMIT}").df()["v"]
        if _holds(present, wanted):
            continue
        extra = f" (latest() is '{latest}')" if name == "sweep" and latest else ""
        lines.append(f"{written}: no row of {view} has that; {view}.{name} has {present_values(present)}{extra}")
        if len(lines) == MAX_HINTS:
            break
    return lines
