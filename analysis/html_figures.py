"""The browser report's plotly figures: noise curves, distance distributions, robust accuracy,
layer weights, Pareto front, importance, parallel coordinates and Optuna's contour and slice."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from analysis import plots


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
