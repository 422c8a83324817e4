"""The browser report: one self-contained HTML file (``analysis.report SWEEP --html``).

Plots are plotly figures drawn as SVG (no WebGL), with plotly's JavaScript inlined once,
so the page opens from disk without network access. Tables are plain HTML, sortable by a
click on a column header (a few lines of inline JavaScript). Sections: trials, arms,
the declared hypotheses' decisions and the comparison with the baseline (analysis.stats.comparison_family), noise curves, adversarial
distance distributions and robust accuracy vs epsilon, layer weights (network order),
Pareto front and parameter importance (Optuna fANOVA). Paths shown are relative to the
results folder.
"""

from __future__ import annotations

import html
import os
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
from analysis.frames import Frames, decision_lines, family_table, family_text, pm, relative_path
from analysis.importance import param_importances, pareto_front
from analysis.provenance_table import load_provenance, provenance_rows, provenance_warnings
from analysis.stats import KEY_METRICS, arm_summary, comparison_family
from neuroreg.atomic import atomic_write_text

_CONFIG = {"displaylogo": False, "responsive": True}

_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.title = "click to sort";
    th.addEventListener("click", function () {
      var dir = th.dataset.dir === "asc" ? -1 : 1;
      table.querySelectorAll("thead th").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir > 0 ? "asc" : "desc";
      var key = function (row) {
        var text = row.cells[col].textContent.trim(), num = parseFloat(text);
        return isNaN(num) ? text : num;
      };
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { return (typeof x === "number" ? -1 : 1) * dir; }
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
    });
  });
});
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table.sortable { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
table.sortable th, table.sortable td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
table.sortable td:first-child, table.sortable th:first-child { text-align: left; }
table.sortable th { background: #f3f3f3; cursor: pointer; user-select: none; }
table.sortable th[data-dir=asc]::after { content: " \\25B2"; } table.sortable th[data-dir=desc]::after { content: " \\25BC"; }
.note { color: #555; font-size: 0.9em; }
.scroll { overflow: auto; max-height: 480px; margin-bottom: 1em; }
.scroll thead th { position: sticky; top: 0; } td { white-space: nowrap; }
"""


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
    """Accuracy vs noise level, a panel per noise type, mean ± SEM over seeds per arm."""
    kinds = sorted(noise["noise"].dropna().unique())
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[f"{k} noise" for k in kinds])
    for i, kind in enumerate(kinds, start=1):
        _lines(fig, plots.mean_sem(noise[noise["noise"] == kind], "level", "accuracy", "arm"), "level", colors,
               col=i, legend=i == 1)
        fig.update_xaxes(title_text="level", row=1, col=i)
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


class _Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_figures = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def p(self, text: str, cls: str = "") -> None:
        self.add(f"<p{f' class={cls!r}' if cls else ''}>{html.escape(text)}</p>")

    def table(self, df: pd.DataFrame, digits: int = 4) -> None:
        if not len(df):
            self.p("(no rows)", "note")
            return
        shown = df.copy()
        for c in shown.columns:
            if pd.api.types.is_float_dtype(shown[c]):
                shown[c] = shown[c].map(lambda v: "–" if pd.isna(v) else f"{v:.{digits}g}")
        self.add('<div class="scroll">' + shown.to_html(index=False, classes="sortable", border=0, na_rep="–",
                                                         escape=True) + "</div>")

    def figure(self, title: str, make: Any) -> None:
        """Draw a figure; a failure becomes a note on the page, never a failed report."""
        try:
            fig = make()
        except Exception as e:  # noqa: BLE001 -- one plot must not cost the whole page
            self.p(f"{title}: not drawn ({type(e).__name__}: {e})", "note")
            return
        self.n_figures += 1
        self.add(fig.to_html(full_html=False, include_plotlyjs=False, config=_CONFIG,
                             div_id=f"figure-{self.n_figures}", default_width="100%"))


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
    page.add(f"<h1>{html.escape(title)}</h1>")
    if frames.spec.get("description"):
        page.p(str(frames.spec["description"]))
    page.p("Sources (relative to the results folder): " + ", ".join(
        relative_path(src, root) for src in _sources(frames, root)) + ".", "note")

    fam = comparison_family(done, frames.spec)
    if len(fam.confirmatory):
        page.add("<h2>Decisions on the declared hypotheses (confirmatory)</h2>")
        page.add("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in decision_lines(fam)) + "</ul>")

    page.add("<h2>Trials</h2>")
    page.table(trials.groupby(["sweep", "status"]).size().reset_index(name="trials"))
    if frames.repeats:
        page.p(f"{frames.repeats} trial(s) repeat a configuration and seed of another sweep; "
               "their metrics are averaged into one seed (one observation) in every table, plot and test.", "note")

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
        for para in family_text(fam).replace("`", "").replace("**", "").replace("*", "").split("\n\n"):
            page.p(para)
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
        page.add(f"<h2>Parameter importance for {html.escape(metric)}</h2>")
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
           f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
           f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>\n<body>\n"
           + "\n".join(page.parts) + f"\n<script>{_SORT_JS}</script>\n</body></html>\n")
    return atomic_write_text(Path(out_path), doc)


def _sources(frames: Frames, root: str | os.PathLike) -> list[str]:
    from analysis.query import sweep_meta

    return [str(sweep_meta(root, s).get("sweep_dir", s)) for s in frames.sweeps]
