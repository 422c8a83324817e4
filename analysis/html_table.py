"""HTML tables of the browser report: sortable (numbers as numbers, missing values last), a
filter box and pages when long, sticky headers in their own scroll box; and the markdown
inline marks the report's text uses. Inline JavaScript and CSS only, so the page needs no
network."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

PAGE_SIZE = 25
"""Rows per page of a long table; longer tables get a filter box and page buttons."""

# Sorting, filtering and paging of the tables; inline, no network. A cell's data-v holds its
# number ("" = missing), so "0.91 ± 0.01", "[-0.02, 0.05]" and exponents sort as numbers,
# missing values ('–') last in both directions and text after numbers in a mixed column.
_TABLE_JS = r"""
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === "") { return {rank: 2}; }
    if (v !== null) { return {rank: 0, v: Number(v)}; }
    return {rank: 1, v: cell.textContent.trim().toLowerCase()};
  }
  function compare(a, b, dir) {
    if (a.rank !== b.rank) { return a.rank - b.rank; }
    if (a.rank === 2) { return 0; }
    return (a.v < b.v ? -1 : a.v > b.v ? 1 : 0) * dir;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var size = parseInt(table.getAttribute("data-page-size") || "0", 10), page = 0, query = "";
    var info = null, prev = null, next = null;
    function render() {
      var shown = rows.filter(function (r) { return !query || r.textContent.toLowerCase().indexOf(query) >= 0; });
      var per = size > 0 ? size : shown.length || 1, pages = Math.max(1, Math.ceil(shown.length / per));
      page = Math.min(page, pages - 1);
      rows.forEach(function (r) { r.hidden = true; });
      shown.slice(page * per, page * per + per).forEach(function (r) { r.hidden = false; });
      if (info) {
        info.textContent = (shown.length ? (page * per + 1) + "–" + Math.min(shown.length, page * per + per) : "0")
          + " of " + shown.length + " rows" + (shown.length < rows.length ? " (filtered from " + rows.length + ")" : "");
        prev.disabled = page === 0; next.disabled = page >= pages - 1;
      }
    }
    if (size > 0 && rows.length > size) {
      var bar = document.createElement("div"); bar.className = "tabletools";
      var filter = document.createElement("input");
      filter.type = "search"; filter.placeholder = "filter rows"; filter.setAttribute("aria-label", "filter rows");
      filter.addEventListener("input", function () { query = filter.value.trim().toLowerCase(); page = 0; render(); });
      prev = document.createElement("button"); prev.type = "button"; prev.textContent = "‹ prev";
      next = document.createElement("button"); next.type = "button"; next.textContent = "next ›";
      prev.addEventListener("click", function () { page -= 1; render(); });
      next.addEventListener("click", function () { page += 1; render(); });
      var pick = document.createElement("select"); pick.setAttribute("aria-label", "rows per page");
      [size, 100, 0].forEach(function (n) {
        var o = document.createElement("option"); o.value = n; o.textContent = n ? n + " per page" : "all rows";
        pick.appendChild(o);
      });
      pick.addEventListener("change", function () { size = parseInt(pick.value, 10); page = 0; render(); });
      info = document.createElement("span"); info.className = "pageinfo";
      [filter, prev, next, pick, info].forEach(function (e) { bar.appendChild(e); });
      table.parentNode.parentNode.insertBefore(bar, table.parentNode);
    } else { size = 0; }
    table.querySelectorAll("thead th").forEach(function (th, col) {
      th.title = "click to sort"; th.tabIndex = 0;
      function sort() {
        var dir = th.getAttribute("data-dir") === "asc" ? -1 : 1;
        table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("data-dir"); });
        th.setAttribute("data-dir", dir > 0 ? "asc" : "desc");
        rows.sort(function (a, b) { return compare(key(a.cells[col]), key(b.cells[col]), dir); });
        rows.forEach(function (r) { body.appendChild(r); });
        page = 0; render();
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
    });
    render();
  });
})();
"""

# Text column at a readable measure; tables and figures may use the full width. A table
# that is still wider scrolls inside its own box (both ways, headers sticky), never the page.
_CSS = """
*, *::before, *::after { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1800px; padding: 0 16px; color: #222;
       line-height: 1.45; overflow-wrap: anywhere; }
p, ul, .note { max-width: 80em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; }
code { font-size: 0.92em; background: #f4f4f4; padding: 0 0.2em; }
.tablewrap { overflow: auto; max-height: 85vh; width: fit-content; max-width: 100%; margin: 0.4em 0 1.2em;
             border: 1px solid #ddd; }
table.sortable { border-collapse: separate; border-spacing: 0; font-size: 0.85em; }
table.sortable th, table.sortable td { border-right: 1px solid #e4e4e4; border-bottom: 1px solid #e4e4e4;
                                       padding: 3px 6px; text-align: right; white-space: nowrap; }
table.sortable td.text, table.sortable th.text { text-align: left; }
table.sortable thead th { position: sticky; top: 0; z-index: 1; background: #f3f3f3; cursor: pointer;
                          user-select: none; vertical-align: bottom; white-space: normal; overflow-wrap: normal; }
table.sortable th[data-dir=asc]::after { content: " \\25B2"; } table.sortable th[data-dir=desc]::after { content: " \\25BC"; }
table.sortable tbody tr:nth-child(even) { background: #fafafa; }
.tabletools { display: flex; flex-wrap: wrap; gap: 0.4em; align-items: center; font-size: 0.85em; margin-top: 0.4em; }
.tabletools input { flex: 1 1 12em; max-width: 24em; padding: 2px 6px; }
.note { color: #555; font-size: 0.9em; }
.plotly-graph-div { max-width: 100%; }
.figtitle { font-weight: 600; margin: 1.2em 0 0; }
@media (max-width: 640px) {
  body { padding: 0 8px; margin-top: 0.8em; } h1 { font-size: 1.25em; } h2 { font-size: 1.1em; }
  table.sortable { font-size: 0.8em; }
}
"""

_NUM = r"[-+−]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf"
_NUMERIC_TEXT = re.compile(rf"^(?:({_NUM})(?:\s*±\s*(?:{_NUM}))?|\[\s*({_NUM})\s*,\s*(?:{_NUM})\s*\])$")
_MISSING_TEXT = {"", "–", "nan", "NaN", "None", "<NA>"}


def sort_value(v: Any) -> str | None:
    """The data-v of a cell: its number as text, "" when missing, None for plain text.

    'mean ± sem' sorts by its mean and a '[low, high]' interval by its lower bound."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        f = float(v)
        return "" if math.isnan(f) else ("Infinity" if f == math.inf else "-Infinity" if f == -math.inf else repr(f))
    text = str(v).strip()
    if text in _MISSING_TEXT:
        return ""
    m = _NUMERIC_TEXT.match(text)
    if not m:
        return None
    num = (m.group(1) or m.group(2)).replace("−", "-")
    return sort_value(float(num))


def _cell_text(v: Any, digits: int) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)) and not isinstance(v, (bool, np.bool_)):
        return f"{float(v):.{digits}g}"
    return str(v)


def _breakable(name: Any) -> str:
    return re.sub(r"([._])", r"\1<wbr>", html.escape(str(name)))


def table_html(df: pd.DataFrame, digits: int = 4, links: Mapping[str, Sequence[str | None]] | None = None,
               page_size: int = PAGE_SIZE) -> str:
    """A sortable table in its own scroll box; over ``page_size`` rows it gets a filter box and pages.

    ``links``: column -> an href per row (None: no link), relative to the page."""
    links = links or {}
    cols = list(df.columns)
    rows = list(df.itertuples(index=False))
    keys = [[sort_value(v) for v in row] for row in rows]
    # A column is text (left-aligned) when none of its cells reads as a number.
    text_col = [all(k[j] in (None, "") for k in keys) and any(k[j] is None for k in keys) for j in range(len(cols))]
    # A long header breaks after '.' or '_' (regularizer.<wbr>alpha), not between any two letters.
    head = "".join(f'<th scope="col"{" class=text" if text_col[j] else ""}>{_breakable(c)}</th>'
                   for j, c in enumerate(cols))
    body = []
    for i, (row, ks) in enumerate(zip(rows, keys)):
        cells = []
        for j, (c, v, k) in enumerate(zip(cols, row, ks)):
            attr = (" class=text" if text_col[j] else "") + (f' data-v="{k}"' if k is not None else "")
            text = html.escape(_cell_text(v, digits))
            href = links[c][i] if c in links else None
            if href:
                text = f'<a href="{html.escape(href, quote=True)}">{text}</a>'
            cells.append(f"<td{attr}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    paged = f' data-page-size="{page_size}"' if page_size and len(df) > page_size else ""
    return (f'<div class="tablewrap"><table class="sortable"{paged}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


_MD_CODE = re.compile(r"`([^`]+)`")
_MD_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_MD_EM = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_MD_EM_UNDERSCORE = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")


def md_inline(text: str) -> str:
    """Markdown's inline marks (`code`, **strong**, *em*, _em_) of the report's own sentences as
    HTML; everything else escaped. Enough for the text analysis.frames writes, not a parser."""
    out = html.escape(text, quote=False)
    out = _MD_CODE.sub(r"<code>\1</code>", out)
    out = _MD_STRONG.sub(r"<strong>\1</strong>", out)
    out = _MD_EM.sub(r"<em>\1</em>", out)
    return _MD_EM_UNDERSCORE.sub(r"<em>\1</em>", out)
