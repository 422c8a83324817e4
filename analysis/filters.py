"""``--where`` filter expressions, parsed, never evaluated as code.

Grammar (``and`` binds tighter than ``or``; parentheses group)::

    expr    := term ("or" term)*
    term    := factor ("and" factor)*
    factor  := "not" factor | "(" expr ")" | column OP literal
    OP      := == | != | < | <= | > | >=
    literal := number | 'string' | "string" | true | false | null

Columns are names or aliases (dotted names such as ``regularizer.alpha`` and metric names
such as ``noise_acc_gaussian_0.08`` as they are, or in backticks). pandas' ``eval`` with
the python engine runs arbitrary code, so user text never reaches it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<bt>`[^`]+`)
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op>==|!=|<=|>=|<|>|\(|\))
      | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
      | (?P<word>[A-Za-z_][\w./-]*)
    )""",
    re.VERBOSE,
)
_OPS: dict[str, Callable] = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
                             ">": operator.gt, ">=": operator.ge}
_LITERALS = {"true": True, "false": False, "null": None, "none": None}
MAX_DEPTH = 64
"""Deepest nesting of parentheses and ``not`` (deeper is refused, never a RecursionError)."""
MAX_CHARS = 10_000
"""Longest expression."""


class FilterError(ValueError):
    """A --where expression that does not parse; the message says where and what was expected."""


class UnknownColumnError(FilterError, KeyError):
    """A filter names a column the table does not have."""


def tokenize(expr: str) -> list[tuple[str, str]]:
    if len(expr) > MAX_CHARS:
        raise FilterError(f"--where: the expression is {len(expr)} characters long; at most {MAX_CHARS}")
    out, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise FilterError(f"--where {expr!r}: cannot read {expr[pos:pos + 20]!r} at character {pos + 1}; "
                              "write column OP value, e.g. \"alpha >= 1 and target == 'pixel_th'\"")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def parse_filter(expr: str, df: pd.DataFrame, resolve: Callable[[str, Iterable[str]], str]) -> pd.Series:
    """The boolean row mask of ``expr`` over ``df`` (``resolve`` maps names and aliases)."""
    toks = tokenize(expr)
    if not toks:
        raise FilterError("--where: empty expression")
    i = 0
    depth = 0

    def peek() -> tuple[str, str] | None:
        return toks[i] if i < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal i
        if i >= len(toks):
            raise FilterError(f"--where {expr!r}: ends early; write column OP value")
        i += 1
        return toks[i - 1]

    def is_word(t, w: str) -> bool:
        return t is not None and t[0] == "word" and t[1].lower() == w

    def parse_expr() -> pd.Series:
        m = parse_term()
        while is_word(peek(), "or"):
            take()
            m = m | parse_term()
        return m

    def parse_term() -> pd.Series:
        m = parse_factor()
        while is_word(peek(), "and"):
            take()
            m = m & parse_factor()
        return m

    def parse_factor() -> pd.Series:
        nonlocal depth
        t = take()
        if (t[0] == "word" and t[1].lower() == "not") or t == ("op", "("):
            depth += 1
            if depth > MAX_DEPTH:
                raise FilterError(f"--where: parentheses and 'not' nest more than {MAX_DEPTH} deep; simplify it")
            try:
                return ~parse_factor() if t[0] == "word" else parse_group()
            finally:
                depth -= 1
        return parse_comparison(t)

    def parse_group() -> pd.Series:
        m = parse_expr()
        if peek() != ("op", ")"):
            raise FilterError(f"--where {expr!r}: missing ')'")
        take()
        return m

    def parse_comparison(t: tuple[str, str]) -> pd.Series:
        if t[0] not in ("word", "bt"):
            raise FilterError(f"--where {expr!r}: expected a column name, got {t[1]!r}")
        try:
            col = resolve(t[1].strip("`"), df.columns)
        except KeyError as e:
            raise UnknownColumnError(f"--where {expr!r}: {e.args[0]}") from None
        op = take()
        if op[0] != "op" or op[1] not in _OPS:
            raise FilterError(f"--where {expr!r}: expected one of {list(_OPS)} after {t[1]!r}, got {op[1]!r}")
        return _compare(df[col], _OPS[op[1]], _literal(take(), expr))

    mask = parse_expr()
    if i != len(toks):
        raise FilterError(f"--where {expr!r}: unexpected {toks[i][1]!r}; join conditions with and / or")
    return mask.fillna(False).astype(bool)


def filter_columns(expr: str, columns: Iterable[str], resolve: Callable[[str, Iterable[str]], str]) -> list[str]:
    """The columns a well-formed expression compares (names resolved, in order, once each)."""
    toks = tokenize(expr)
    cols = list(columns)
    out: dict[str, None] = {}
    for t, nxt in zip(toks, toks[1:]):
        if t[0] in ("word", "bt") and nxt[0] == "op" and nxt[1] in _OPS:
            out[resolve(t[1].strip("`"), cols)] = None
    return list(out)


def _literal(t: tuple[str, str], expr: str):
    kind, text = t
    if kind == "num":
        return float(text) if any(c in text for c in ".eE") else int(text)
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if kind == "word" and text.lower() in _LITERALS:
        return _LITERALS[text.lower()]
    if kind == "word":  # a bare word compares as a string: target == pixel_th
        return text
    raise FilterError(f"--where {expr!r}: expected a value (number, 'string', true, false, null), got {text!r}")


def _compare(series: pd.Series, op: Callable, value) -> pd.Series:
    if value is None:
        if op is operator.eq:
            return series.isna()
        if op is operator.ne:
            return series.notna()
        raise FilterError("--where: null can only be compared with == or !=")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        num = pd.to_numeric(series, errors="coerce").astype(float)
        if op in (operator.eq, operator.ne):
            # Levels come from float arithmetic (0.08 may be stored as 0.08000000000000002).
            close = pd.Series(np.isclose(num, float(value), rtol=1e-9, atol=1e-12), index=series.index)
            return close if op is operator.eq else ~close & num.notna()
        return op(num, float(value)).fillna(False)
    if isinstance(value, bool):
        return op(series.astype("boolean"), value).fillna(False)
    return op(series.astype(str), str(value))
