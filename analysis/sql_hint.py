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


def _parse(sql: str, con: duckdb.DuckDBPyConnection) -> dict | None:
    """DuckDB's syntax tree of one statement; None for other kinds (PIVOT does not serialize)."""
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    except (duckdb.Error, TypeError, ValueError):
        return None
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        return None
    return tree["statements"][0]


TABLE_REFS = ("BASE_TABLE", "SUBQUERY", "TABLE_FUNCTION", "JOIN", "EXPRESSION_LIST", "PIVOT", "SHOW_REF",
              "COLUMN_DATA", "DELIM_GET", "EMPTY_FROM")


def comparisons(sql: str, con: duckdb.DuckDBPyConnection, views: list[str]) -> list[tuple[str, str, list[Any], str]]:
    """(view, column, constants, as written) of each comparison of a view's column with
    constants in one SELECT statement; empty when it does not parse.

    A column counts only where its view is certain: ``q.col`` with ``q`` bound once in the
    whole statement, to a view (not a CTE, a subquery or a function); a bare ``col`` only in
    a single SELECT over views alone (no CTE, subquery or set operation), where it is the
    first such view that has the column.
    """
    tree = _parse(sql, con)
    if tree is None:
        return []
    nodes = list(_nodes(tree))
    ctes = {m.get("key") for n in nodes for m in (n.get("cte_map") or {}).get("map", []) if isinstance(m, dict)}
    bindings: dict[str, list[str | None]] = {}
    for n in nodes:
        if n.get("type") not in TABLE_REFS:
            continue
        target = n.get("table_name") if n["type"] == "BASE_TABLE" and n.get("table_name") not in ctes else None
        names = {n.get("alias"), n.get("table_name") if n["type"] == "BASE_TABLE" else None} - {None, ""}
        for name in names:
            bindings.setdefault(name, []).append(target if target in views else None)
    simple = sum(n.get("type") in ("SELECT_NODE", "SET_OPERATION_NODE") for n in nodes) == 1 and not ctes and all(
        n.get("type") in ("BASE_TABLE", "JOIN") for n in nodes if n.get("type") in TABLE_REFS) and all(
        t is not None for ts in bindings.values() for t in ts)
    in_order = [t for n in nodes if n.get("type") == "BASE_TABLE" for t in [n.get("table_name")] if t in views]
    columns = {v: {r[0] for r in con.execute(f"DESCRIBE {v}").fetchall()} for v in dict.fromkeys(in_order)}

    def view_of(path: list[str]) -> str | None:
        if len(path) == 2:
            bound = bindings.get(path[0], [])
            return bound[0] if len(bound) == 1 and bound[0] is not None and path[1] in columns[bound[0]] else None
        if len(path) == 1 and simple:
            return next((v for v in in_order if path[0] in columns[v]), None)
        return None

    found = []
    for node in nodes:
        kind = node.get("type")
        if kind == "COMPARE_EQUAL":
            sides = [node.get("left") or {}, node.get("right") or {}]
            for col, const in (sides, sides[::-1]):
                ok, value = _constant(const)
                if col.get("class") == "COLUMN_REF" and ok and (view := view_of(col["column_names"])):
                    found.append((view, col["column_names"][-1], [value], _written(sql, node)))
        elif kind == "COMPARE_IN":
            kids = node.get("children") or []
            consts = [_constant(k) for k in kids[1:]]
            if kids and kids[0].get("class") == "COLUMN_REF" and consts and all(ok for ok, _ in consts) \
                    and (view := view_of(kids[0]["column_names"])):
                found.append((view, kids[0]["column_names"][-1], [v for _, v in consts], _written(sql, node, kids[0])))
    return found


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
    lines: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for view, name, wanted, written in comparisons(sql, con, views):
        if (view, name, written) in seen:
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
