"""The browser report: one self-contained HTML file (``analysis.report SWEEP --html``).

Plots are plotly figures with plotly's JavaScript inlined once, so the page opens from disk
without network access; all are SVG except the parallel coordinates, which plotly draws
with WebGL. Tables are plain HTML in their own scroll box (sticky headers), sortable by a
click on a column header (numbers as numbers, missing values last), with a filter box and
pages when long (inline JavaScript, analysis.html_report._TABLE_JS). A viewport tag makes
the page readable on a phone. Sections: the declared hypotheses' decisions, trials (counts,
every trial with its configuration, seed, status, node, headline metrics and folder; across
sweeps the arm_key table and each sweep side by side), best configuration, arms, the
comparison with the baseline (analysis.stats.comparison_family), noise curves, adversarial
distance distributions and robust accuracy vs epsilon, layer weights (network order), the
sweep structure (Optuna contour and slice, parallel coordinates with brushing), Pareto
front and parameter importance (Optuna fANOVA). Fields that do not apply to a run show as
'–' (analysis.applicable). Paths shown are relative to the results folder.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from analysis import plots
from analysis.frames import (
    Frames,
    continuous_params,
    decision_lines,
    family_table,
    family_text,
    pm,
    relative_path,
    spec_objectives,
)
from analysis.importance import param_importances, pareto_front
from analysis.provenance_table import load_provenance, provenance_rows, provenance_warnings
from analysis.stats import KEY_METRICS, arm_summary, best_arm, comparison_family
from neuroreg.atomic import atomic_write_text

_CONFIG = {"displaylogo": False, "responsive": True}

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


def _colors(names: Sequence[Any]) -> dict[Any, str]:
    """The arm colours of the static figures (analysis.plots.arm_colors, viridis), as CSS rgb()."""
    return {k: "rgb({}, {}, {})".format(*(round(255 * c) for c in rgba[:3]))
            for k, rgba in plots.arm_colors(list(names)).items()}


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, height=height, template="plotly_white", margin={"t": 60, "b": 40},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.18, "font": {"size": 11}})
    return fig


def _lines(fig: go.Figure, stats: pd.DataFrame, x: str, colors: Mapping[Any, str], col: int = 1,
           legend: bool = True, band: bool = False, group: str = "arm") -> None:
    """A line per group with its SEM as error bars, or as a shaded band (dense x, e.g. epsilon)."""
    for name, g in stats.groupby(group, sort=True):
        g = g.sort_values(x)
        sem = g["sem"].fillna(0.0)
        if band:
            fill = colors[name].replace("rgb(", "rgba(").replace(")", ", 0.2)")
            fig.add_trace(go.Scatter(x=g[x], y=g["mean"] + sem, mode="lines", line={"width": 0}, showlegend=False,
                                     legendgroup=str(name), hoverinfo="skip"), row=1, col=col)
            fig.add_trace(go.Scatter(x=g[x], y=g["mean"] - sem, mode="lines", line={"width": 0}, fill="tonexty",
                                     fillcolor=fill, showlegend=False, legendgroup=str(name), hoverinfo="skip"),
                          row=1, col=col)
        fig.add_trace(go.Scatter(
            x=g[x], y=g["mean"], error_y=None if band else {"type": "data", "array": sem, "visible": True},
            mode="lines" if band else "lines+markers", name=str(name), legendgroup=str(name), showlegend=legend,
            line={"color": colors[name]}, marker={"size": 5},
            hovertemplate=f"{html.escape(str(name))}<br>{x}=%{{x:.4g}}<br>mean=%{{y:.4g}}<extra></extra>",
        ), row=1, col=col)


def noise_figure(noise: pd.DataFrame, colors: Mapping[Any, str]) -> go.Figure:
    """Accuracy vs noise level, a panel per noise type (its level's meaning on the x axis),
    mean ± SEM over seeds per arm."""
    kinds = sorted(noise["noise"].dropna().unique())
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[plots.noise_axis(k)[0] for k in kinds])
    for i, kind in enumerate(kinds, start=1):
        _lines(fig, plots.mean_sem(noise[noise["noise"] == kind], "level", "accuracy", "arm"), "level", colors,
               col=i, legend=i == 1)
        fig.update_xaxes(title_text=plots.noise_axis(kind)[1], title_font={"size": 11}, row=1, col=i)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    return _layout(fig, "Accuracy under random noise (mean ± SEM over seeds)")


def distance_figure(adv: pd.DataFrame, colors: Mapping[Any, str]) -> go.Figure:
    """Per-image minimal distances of the correctly classified, broken images: a box per arm and norm."""
    norms = sorted(adv["norm"].dropna().unique())
    fig = make_subplots(rows=1, cols=len(norms), subplot_titles=[f"minimal {n} distance" for n in norms])
    for i, norm in enumerate(norms, start=1):
        d = adv[(adv["norm"] == norm) & (adv["attack"] != "misclassified")]
        d = d[np.isfinite(pd.to_numeric(d["distance"], errors="coerce"))]
        for name, g in d.groupby("arm", sort=True):
            fig.add_trace(go.Box(y=g["distance"], name=str(name), legendgroup=str(name), showlegend=i == 1,
                                 marker={"color": colors[name], "size": 3}, boxpoints="outliers"), row=1, col=i)
        fig.update_xaxes(showticklabels=False, row=1, col=i)
    fig.update_yaxes(title_text="distance", row=1, col=1)
    return _layout(fig, "Minimal adversarial distance per image (clean errors and unbroken images left out)")


def robust_figure(adv: pd.DataFrame, colors: Mapping[Any, str]) -> go.Figure:
    """Robust accuracy vs epsilon from the per-image minimal distances, mean ± SEM over seeds."""
    curves = plots.robust_accuracy(adv)
    norms = sorted(curves["norm"].unique())
    fig = make_subplots(rows=1, cols=len(norms), subplot_titles=[f"{n} attacks" for n in norms])
    for i, norm in enumerate(norms, start=1):
        _lines(fig, plots.mean_sem(curves[curves["norm"] == norm], "epsilon", "accuracy", "arm"), "epsilon",
               colors, col=i, legend=i == 1, band=True)
        fig.update_xaxes(title_text=f"epsilon ({norm})", row=1, col=i)
    fig.update_yaxes(title_text="robust accuracy", range=[0, 1.02], row=1, col=1)
    return _layout(fig, "Accuracy under minimal adversarial perturbations of size <= epsilon")


def layer_weight_figure(active: pd.DataFrame, colors: Mapping[Any, str]) -> go.Figure:
    """Softmax layer weights of the evaluated checkpoint per arm, layers in network order."""
    cols = sorted((c for c in active.columns if c.startswith("layer_weight_")), key=plots.network_order)
    d = active[["arm", *cols]].dropna(subset=cols, how="all")
    if not len(d):
        raise ValueError("layer weights: no trial reported layer weights")
    layers = [c.removeprefix("layer_weight_") for c in cols]
    fig = go.Figure()
    for name, g in d.groupby("arm", sort=True):
        fig.add_trace(go.Bar(x=layers, y=g[cols].mean().to_numpy(), name=str(name), marker_color=colors[name],
                             error_y={"type": "data", "array": g[cols].sem().fillna(0.0).to_numpy()}))
    fig.add_hline(y=1.0 / len(cols), line_dash="dot", annotation_text="uniform")
    fig.update_layout(barmode="group", yaxis_title="softmax weight",
                      xaxis={"categoryorder": "array", "categoryarray": layers})
    return _layout(fig, "Layer weights of the evaluated checkpoint (mean ± SEM over seeds)")


def pareto_figure(means: pd.DataFrame, front: pd.DataFrame, x: str, y: str) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=means[x], y=means[y], mode="markers", name="arms", text=means["arm"],
                             marker={"color": "#999", "size": 8}, hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>"))
    f = front.sort_values(x)
    fig.add_trace(go.Scatter(x=f[x], y=f[y], mode="lines+markers", name="Pareto front", text=f["arm"],
                             marker={"color": sample_colorscale("Viridis", [0.0])[0], "size": 10},
                             hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>"))
    fig.update_layout(xaxis_title=x, yaxis_title=y)
    return _layout(fig, "Pareto front (arm means over seeds)")


def importance_figure(imp: pd.Series, metric: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=imp.to_numpy(), y=list(imp.index), orientation="h",
                           marker_color=sample_colorscale("Viridis", [0.35])[0]))
    fig.update_layout(xaxis_title="importance (fANOVA, sums to 1)", yaxis={"autorange": "reversed"})
    return _layout(fig, f"Parameter importance for {metric}", height=120 + 40 * len(imp))


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def parcoords_figure(done: pd.DataFrame, params: Sequence[str], metric: str) -> go.Figure:
    """Parallel coordinates (plotly): one line per finished run over the parameters and the
    metric, coloured by the metric; drag along an axis to brush (filter) the lines.

    A parameter that does not apply to a run (analysis.applicable: the baseline's alpha and
    Th) is drawn at a separate '–' tick below the axis's values. Plotly has no missing value
    on a parcoords axis (a NaN line is drawn from a stray point), and the field's unused
    default (Th 0.8) would put the baseline among the regularized arms.
    """
    from analysis.applicable import blank_inapplicable
    from analysis.importance import design_label

    d = blank_inapplicable(done, params)
    d[metric] = pd.to_numeric(d[metric], errors="coerce")
    d = d[d[metric].notna()]
    if not len(d):
        raise ValueError(f"parallel coordinates: no finished run reports {metric}")
    dims = []
    for c in params:
        v = d[c]
        present = v.notna()
        num = pd.to_numeric(v[present], errors="coerce")
        dim: dict[str, Any] = {"label": _short(c)}
        if len(num) and num.notna().all() and not pd.api.types.is_bool_dtype(v[present]):
            lo, hi = float(num.min()), float(num.max())
            uniq = sorted(num.unique())
            ticks = uniq if len(uniq) <= 6 else list(np.linspace(lo, hi, 5))
            gap = 0.2 * (hi - lo) or 0.2 * abs(lo) or 1.0
            values = pd.to_numeric(v, errors="coerce")
            if (~present).any():
                values = values.fillna(lo - gap)
                ticks = [lo - gap, *ticks]
                dim["range"] = [lo - 1.4 * gap, hi]  # the '–' tick clear of the axis's end label
            dim.update(values=values.to_numpy(dtype=float), tickvals=ticks,
                       ticktext=["–" if t == lo - gap and (~present).any() else f"{t:.3g}" for t in ticks])
        else:
            cats = sorted(v[present].astype(str).unique())
            code = {k: i for i, k in enumerate(cats)}
            values = v.astype(str).map(code).where(present, -1)
            ticks = ([-1] if (~present).any() else []) + list(range(len(cats)))
            dim["range"] = [min(ticks) - 0.4, max(ticks) + 0.4]
            dim.update(values=values.to_numpy(dtype=float), tickvals=ticks,
                       ticktext=(["–"] if (~present).any() else []) + cats)
        dims.append(dim)
    dims.append({"label": metric, "values": d[metric].to_numpy(dtype=float)})
    fig = go.Figure(go.Parcoords(
        dimensions=dims, labelangle=0, labelside="top", labelfont={"size": 13}, tickfont={"size": 11},
        rangefont={"size": 9},
        line={"color": d[metric].to_numpy(dtype=float), "colorscale": "Viridis", "showscale": True,
              "colorbar": {"title": {"text": metric, "side": "right"}, "thickness": 12}}))
    note = " (–: does not apply to that run)" if any("–" in dim.get("ticktext", []) for dim in dims) else ""
    _layout(fig, f"{metric}: one line per run, {design_label(d, params)}{note}", height=440)
    fig.update_layout(margin={"t": 90, "l": 50, "r": 40, "b": 30})
    return fig


def optuna_figure(kind: str, trials: pd.DataFrame, params: Sequence[str], metric: str, mode: str,
                  space: Mapping[str, Any] | None) -> go.Figure:
    """Optuna's own plotly contour or slice plot of ``metric`` over the trials replayed into a study."""
    import warnings

    import optuna
    from optuna.visualization import plot_contour, plot_slice

    from analysis.importance import design_label, study_from_trials

    study = study_from_trials(trials, params, {metric: mode}, space)
    shown = [p for p in params if any(p in t.params for t in study.trials)]
    if len(study.trials) < 2 or not shown:
        raise ValueError(f"optuna {kind}: need >= 2 finished trials and a varying parameter")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fig = (plot_contour if kind == "contour" else plot_slice)(study, params=shown, target_name=metric)
    fig.for_each_xaxis(lambda ax: ax.update(title_text=_short(ax.title.text or "")))
    fig.for_each_yaxis(lambda ax: ax.update(title_text=_short(ax.title.text or "")))
    fig.update_layout(template="plotly_white", height=440 if kind == "contour" else 400,
                      title=f"{metric}: Optuna {kind} plot, {design_label(trials, params)}", margin={"t": 60},
                      autosize=True, width=None)
    return fig


def arms_by_sweep(trials: pd.DataFrame) -> pd.DataFrame:
    """Each arm (one arm_key) of several sweeps and the sweeps that trained it."""
    return trials.groupby("arm").agg(arm_key=("arm_key", "first"),
                                     sweeps=("sweep", lambda v: ", ".join(sorted(set(v)))),
                                     trials=("trial_id", "size")).reset_index()


def side_by_side(trials: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per arm_key, per sweep its finished seeds and 'mean ± SEM' of each metric,
    from that sweep's own trials (a configuration trained in two sweeps shows both)."""
    from analysis.stats import finished

    done = finished(trials)
    metrics = [m for m in metrics if m in done.columns]
    sweeps = sorted(trials["sweep"].unique())
    out = trials.groupby("arm_key").agg(arm=("arm", "first")).reset_index()[["arm_key", "arm"]]
    for sweep in sweeps:
        g = done[done["sweep"] == sweep].groupby("arm_key")
        n = g.size()
        out[f"{sweep}: seeds"] = out["arm_key"].map(n).astype("Int64")
        for m in metrics:
            vals = g[m].agg(["mean", "sem"])
            out[f"{sweep}: {m}"] = [pm(vals["mean"].get(k, math.nan), vals["sem"].get(k, math.nan))
                                   for k in out["arm_key"]]
    return out.sort_values("arm", kind="stable").reset_index(drop=True)


def identity_params(trials: pd.DataFrame, configs: Sequence[str]) -> list[str]:
    """The configuration fields that vary among these trials and make an arm (no seed,
    evaluation, run-time or data-path fields): the columns a per-trial table shows."""
    from analysis.arms import NOT_IDENTITY, is_seed_column
    from analysis.stats import varying_columns

    return [c for c in varying_columns(trials, configs) if not is_seed_column(c) and c not in NOT_IDENTITY
            and not c.startswith("evaluation.") and not c.endswith("_dir")]


NODE_COLUMNS = ("node", "node_ip", "hostname")
"""Columns naming where a trial ran, the first one present is shown (gathered when recorded)."""

TRIAL_METRIC_LEGEND = {
    "best_val_acc": "best validation accuracy over the epochs",
    "clean_acc": "test accuracy of the evaluated checkpoint",
    "noise_acc_mean": "mean test accuracy over every noise type and level above 0",
    "median_l2": "median minimal L2 perturbation over the attacked test images (clean errors count 0)",
    "median_linf": "median minimal Linf perturbation over the attacked test images (clean errors count 0)",
    "epochs": "epochs trained",
    "wall_time_s": "wall-clock seconds of the trial",
}


def trial_table(trials: pd.DataFrame, params: Sequence[str], metrics: Sequence[str], root: str | os.PathLike,
                page_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[str | None]]:
    """Every trial: configuration (the fields that apply to it, '–' elsewhere), train.seed,
    status, node, headline metrics and its folder; with the folder's href relative to the page.

    The folder shows its name and links to it relative to the page; a folder outside the
    results root gets no link, so the page holds no machine path."""
    from analysis.applicable import blank_inapplicable

    t = blank_inapplicable(trials, params)
    cols: list[str] = (["sweep"] if t["sweep"].nunique() > 1 else []) + ["trial_id", "arm", *params]
    cols += [c for c in ("train.seed", "status") if c in t.columns]
    cols += [c for c in NODE_COLUMNS if c in t.columns][:1]
    out = t[[c for c in dict.fromkeys(cols) if c in t.columns]].copy()
    if "n_epochs" in t.columns:
        out["epochs"] = t["n_epochs"].astype("Int64")
    if "wall_time_s" in t.columns:
        out["wall_time_s"] = pd.to_numeric(t["wall_time_s"], errors="coerce").round(1)
    for m in metrics:
        if m in t.columns and m not in out.columns:
            out[m] = pd.to_numeric(t[m], errors="coerce")
    rootp, page = Path(root).resolve(), Path(page_dir).resolve()
    texts, hrefs = [], []
    for d in t["trial_dir"] if "trial_dir" in t.columns else [None] * len(t):
        if d is None or (isinstance(d, float) and math.isnan(d)):
            texts.append("–")
            hrefs.append(None)
            continue
        p = Path(str(d)).resolve()
        inside = p == rootp or rootp in p.parents
        texts.append(p.name)
        hrefs.append(Path(os.path.relpath(p, page)).as_posix() + "/" if inside else None)
    out["folder"] = texts
    order = out.sort_values([c for c in ("sweep", "arm", "train.seed", "trial_id") if c in out.columns],
                            kind="stable").index
    pos = {k: i for i, k in enumerate(out.index)}
    return out.loc[order].reset_index(drop=True), [hrefs[pos[k]] for k in order]


class _Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_figures = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def p(self, text: str, cls: str = "", md: bool = False) -> None:
        body = md_inline(text) if md else html.escape(text)
        self.add(f"<p{f' class={cls!r}' if cls else ''}>{body}</p>")

    def table(self, df: pd.DataFrame, digits: int = 4, links: Mapping[str, Sequence[str | None]] | None = None) -> None:
        if not len(df):
            self.p("(no rows)", "note")
            return
        self.add(table_html(df, digits, links))

    def figure(self, title: str, make: Any) -> None:
        """Draw a figure; a failure becomes a note on the page, never a failed report."""
        try:
            fig = make()
        except Exception as e:  # noqa: BLE001 -- one plot must not cost the whole page
            self.p(f"{title}: not drawn ({type(e).__name__}: {e})", "note")
            return
        self.n_figures += 1
        # The title goes above the figure as text, which wraps on a narrow screen (plotly's does not).
        text = fig.layout.title.text
        if text:
            self.add(f'<p class="figtitle">{html.escape(re.sub(r"<br>", " ", text))}</p>')
            top = fig.layout.margin.t
            fig.update_layout(title_text=None, margin={"t": max(30, (60 if top is None else top) - 30)})
        self.add(fig.to_html(full_html=False, include_plotlyjs=False, config=_CONFIG,
                             div_id=f"figure-{self.n_figures}", default_width="100%"))


def _best_configuration(page: _Page, done: pd.DataFrame, params: Sequence[str], configs: Sequence[str],
                        metric: str, mode: str) -> None:
    from analysis.applicable import applies

    page.add(f"<h2>Best configuration (by <code>{html.escape(metric)}</code>, {mode}, mean over seeds)</h2>")
    best = best_arm(done, metric, mode)
    if best is None:
        page.p(f"No finished trial reports {metric}.", "note")
        return
    page.add(f"<p><strong>{html.escape(str(best['arm']))}</strong>: {html.escape(metric)} = "
             f"{html.escape(pm(best[f'{metric}_mean'], best[f'{metric}_sem']))} over {int(best['n'])} seed(s).</p>")
    rows = done[done["arm"] == best["arm"]]
    top = rows.loc[pd.to_numeric(rows[metric], errors="coerce").agg("idxmax" if mode == "max" else "idxmin")]
    shown = [c for c in params if c in top.index] or [c for c in configs if c in top.index][:12]
    page.table(pd.DataFrame({"field": shown, "value": [top[c] if applies(c, top) else None for c in shown]}))


def build_html(
    frames: Frames,
    root: str | os.PathLike,
    out_path: str | os.PathLike,
    title: str,
    metric: str = "best_val_acc",
    mode: str = "max",
    params: Sequence[str] = (),
    objectives: Mapping[str, str] | None = None,
) -> Path:
    """Write the self-contained page for these frames (one sweep, or several by configuration)."""
    page = _Page()
    done, trials = frames.done, frames.trials
    several = len(frames.sweeps) > 1
    shown_params = list(params) or identity_params(trials, frames.configs)
    page.add(f"<h1>{html.escape(title)}</h1>")
    if frames.spec.get("description"):
        page.p(str(frames.spec["description"]))
    page.p("Sources (relative to the results folder): " + ", ".join(
        relative_path(src, root) for src in _sources(frames, root)) + ".", "note")

    fam = comparison_family(done, frames.spec)
    if len(fam.confirmatory):
        page.add("<h2>Decisions on the declared hypotheses (confirmatory)</h2>")
        page.add("<ul>" + "".join(f"<li>{md_inline(line)}</li>" for line in decision_lines(fam)) + "</ul>")

    page.add("<h2>Trials</h2>")
    page.table(trials.groupby(["sweep", "status"]).size().reset_index(name="trials"))
    if frames.repeats:
        page.p(f"{frames.repeats} trial(s) repeat a configuration and seed of another sweep; "
               "their metrics are averaged into one seed (one observation) in every table, plot and test.", "note")
    if several and "arm_key" in trials.columns:
        page.add("<h3>Arms and where they were trained</h3>")
        page.p("An arm is one arm_key (the trained configuration without its seed, the same hash in every sweep); "
               "its baseline is the unregularized arm of the same condition_key, from any of the sweeps.", "note")
        page.table(arms_by_sweep(trials))
        page.add("<h3>Side by side, per sweep (keyed by arm_key)</h3>")
        page.p("Each sweep's own finished trials: seeds and mean ± SEM over them. A configuration trained in "
               "several sweeps shows each sweep's numbers; the tables below merge them.", "note")
        page.table(side_by_side(trials, dict.fromkeys([metric, "clean_acc", "noise_acc_mean", "median_l2"])))
    headline = [m for m in dict.fromkeys([metric, *(objectives or {}), "best_val_acc", "clean_acc",
                                          "noise_acc_mean", "median_l2", "median_linf"]) if m in trials.columns]
    table, hrefs = trial_table(trials, shown_params, headline, root, Path(out_path).parent)
    page.add(f"<h3>Every trial ({len(table)})</h3>")
    legend = "; ".join(f"{k}: {v}" for k, v in TRIAL_METRIC_LEGEND.items() if k in table.columns)
    page.p("Configuration columns show '–' where the field does not apply to the run (e.g. Th of the "
           "baseline). train.seed is the seed itself; folder links to the trial's folder (relative to the "
           f"results folder). {legend}.", "note")
    page.table(table, links={"folder": hrefs})

    if not several and len(done):
        _best_configuration(page, done, shown_params, frames.configs, metric, mode)

    metrics = [m for m in dict.fromkeys([metric, *KEY_METRICS, "median_l2_correct", "median_linf_correct"])
               if m in done.columns]
    colors = _colors(sorted(trials["arm"].dropna().unique()))
    if metrics and len(done):
        s = arm_summary(done, metrics)
        table = pd.DataFrame({"arm": s["arm"], "n": s["n"]})
        for m in metrics:
            table[m] = [pm(a, b) for a, b in zip(s[f"{m}_mean"], s[f"{m}_sem"])]
        page.add("<h2>Arms (mean ± SEM over seeds)</h2>")
        page.table(table)

    page.add("<h2>Against the baseline</h2>")
    if fam.size:
        for para in family_text(fam).split("\n\n"):
            page.p(para, md=True)
        if len(fam.confirmatory):
            page.add(f"<h3>Confirmatory ({len(fam.confirmatory)} comparisons, Holm)</h3>")
            page.table(family_table(fam.confirmatory, confirmatory=True))
        page.add(f"<h3>Exploratory ({len(fam.exploratory)} comparisons, Benjamini-Hochberg)</h3>")
        page.table(family_table(fam.exploratory))
    else:
        page.p("No unregularized baseline arm (target none or alpha 0) among these trials.", "note")

    if len(frames.noise):
        page.add("<h2>Random noise</h2>")
        page.figure("noise curves", lambda: noise_figure(frames.noise, colors))
    if len(frames.adv):
        page.add("<h2>Minimal adversarial perturbations</h2>")
        page.figure("distance distributions", lambda: distance_figure(frames.adv, colors))
        page.figure("robust accuracy", lambda: robust_figure(frames.adv, colors))
    active = done[~done["baseline"].astype(bool)] if "baseline" in done.columns else done
    if any(c.startswith("layer_weight_") for c in active.columns) and len(active):
        page.add("<h2>Layer weights</h2>")
        page.figure("layer weights", lambda: layer_weight_figure(active, colors))

    _structure(page, frames, active, shown_params if not several else list(params), metric, mode, objectives)

    if objectives and len(objectives) >= 2:
        page.add("<h2>Pareto front</h2>")
        missing = [m for m in objectives if m not in done.columns]
        if missing:
            page.p(f"Not computed: no trial reports {missing}.", "note")
        else:
            means = done.groupby("arm")[list(objectives)].mean().reset_index()
            front = pareto_front(means, objectives)
            page.table(front)
            names = list(objectives)
            page.figure("Pareto front", lambda: pareto_figure(means, front, names[0], names[1]))
    if params and metric in done.columns:
        page.add(f"<h2>Parameter importance for {html.escape(metric)} (Optuna fANOVA)</h2>")
        try:
            imp = param_importances(done, params, metric, mode, frames.spec.get("space"))
        except (ValueError, KeyError, RuntimeError) as e:
            page.p(f"Not computed: {e}", "note")
        else:
            page.table(imp.rename_axis("parameter").reset_index())
            page.figure("importance", lambda: importance_figure(imp, metric))

    prov = load_provenance(root, list(frames.sweeps))
    page.add("<h2>Provenance</h2>")
    for line in provenance_warnings(prov):
        page.p(line, "note")
    if len(prov):
        header, rows = provenance_rows(prov)
        page.table(pd.DataFrame(rows, columns=["field", *header[1:]]))
    else:
        page.p("No provenance recorded (sweeps made before it was, or not gathered).", "note")

    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           '<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
           f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>\n<body>\n"
           + "\n".join(page.parts) + f"\n<script>{_TABLE_JS}</script>\n</body></html>\n")
    return atomic_write_text(Path(out_path), doc)


def _structure(page: _Page, frames: Frames, active: pd.DataFrame, params: Sequence[str], metric: str, mode: str,
               objectives: Mapping[str, str] | None) -> None:
    """The search surface: Optuna's contour (enough configurations only) and slice plots of a
    continuous search, and the parallel coordinates of every run."""
    from analysis.importance import CONTOUR_WHY, too_few_configurations

    done, spec = frames.done, frames.spec
    continuous = continuous_params(spec, active)
    drawn = bool(continuous and len(active)) or bool(params and metric in done.columns)
    if not drawn:
        return
    page.add("<h2>Sweep structure</h2>")
    if continuous and len(active):
        modes = {metric: mode, **(objectives or spec_objectives(spec) or {})}
        reason = too_few_configurations(active, continuous, CONTOUR_WHY)
        if reason:
            page.p(f"Contour plot not drawn: {reason}", "note")
        for m, d in modes.items():
            if m not in active.columns or not active[m].notna().any():
                continue
            if not reason:
                page.figure(f"Optuna contour: {m}", lambda m=m, d=d: optuna_figure(
                    "contour", active, continuous, m, d, spec.get("space")))
            page.figure(f"Optuna slice: {m}", lambda m=m, d=d: optuna_figure(
                "slice", active, continuous, m, d, spec.get("space")))
    if params and metric in done.columns:
        page.p("Parallel coordinates: drag along an axis to select a range (brushing); click outside the "
               "selection to clear it.", "note")
        page.figure("parallel coordinates", lambda: parcoords_figure(done, params, metric))


def _sources(frames: Frames, root: str | os.PathLike) -> list[str]:
    from analysis.query import sweep_meta

    return [str(sweep_meta(root, s).get("sweep_dir", s)) for s in frames.sweeps]
