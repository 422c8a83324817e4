"""Plots of the gathered tables (matplotlib, Agg backend), each saved as PNG, SVG and PDF.

Every function takes DataFrames as ``analysis.query.load`` returns them (record tables
joined with the trials' config columns, so ``arm`` is there), writes ``<out>.png`` and
``<out>.svg`` and ``<out>.pdf`` and returns the paths. Colours come from viridis
(perceptually uniform, readable in grey), legends sit under the panels and labels are at
least 8 pt, so the figures go into a paper as they are. Error bands and bars are the standard error of
the mean over the trials of a group, i.e. over seeds when a group is one configuration.
"""

from __future__ import annotations

import os
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

FORMATS = ("png", "svg", "pdf")
CMAP = "viridis"
"""The colormap of every figure: perceptually uniform, unlike jet."""
_NO_DATE = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def arm_colors(names: Sequence) -> dict:
    """One colour per group from viridis, stopping short of its pale yellow end (invisible on white)."""
    cmap = plt.get_cmap(CMAP)
    n = len(names)
    return {name: cmap(0.5 if n == 1 else 0.85 * i / (n - 1)) for i, name in enumerate(names)}


def wrap(label: object, width: int = 22) -> str:
    """A long arm label broken into lines at spaces, so neighbouring labels do not overprint."""
    return "\n".join(textwrap.wrap(str(label), width, break_long_words=False)) or str(label)


def save(fig: plt.Figure, out: str | os.PathLike) -> list[Path]:
    """Write ``out`` (without suffix) as PNG, SVG and PDF; closes the figure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    # A fixed svg.hashsalt and no date keep repeated runs byte-identical.
    with matplotlib.rc_context({"svg.hashsalt": "neuroreg"}):
        for fmt in FORMATS:
            p = out.with_suffix(f".{fmt}")
            fig.savefig(p, dpi=150, bbox_inches="tight", metadata=_NO_DATE.get(fmt))
            paths.append(p)
    plt.close(fig)
    return paths


def mean_sem(df: pd.DataFrame, x: str, y: str, group: str) -> pd.DataFrame:
    """group, x -> mean, sem, n of y over the group's rows."""
    d = df[[group, x, y]].copy()
    d[y] = pd.to_numeric(d[y], errors="coerce")
    out = d.groupby([group, x], dropna=False)[y].agg(["mean", "sem", "count"]).reset_index()
    return out.rename(columns={"count": "n"})


def _lines_with_bands(ax: plt.Axes, df: pd.DataFrame, x: str, y: str, group: str,
                      colors: Mapping | None = None) -> None:
    stats = mean_sem(df, x, y, group)
    colors = colors or arm_colors(sorted(stats[group].unique(), key=str))
    for name, g in stats.groupby(group, sort=True):
        g = g.sort_values(x)
        sem = g["sem"].fillna(0.0).to_numpy()
        line = ax.plot(g[x], g["mean"], marker="o" if len(g) <= 15 else None, ms=3, color=colors[name],
                       label=f"{name} (n={int(g['n'].max())})")[0]
        ax.fill_between(g[x], g["mean"] - sem, g["mean"] + sem, color=line.get_color(), alpha=0.2, lw=0)


def legend_below(fig: plt.Figure, ax: plt.Axes, ncol: int | None = None, title: str | None = None) -> None:
    """One legend for the figure, under the panels (needs layout="constrained"): long arm
    labels then never cover a curve or run into the neighbouring panel."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol or min(2, len(labels)), fontsize=9,
                   frameon=False, title=title)


def _require(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the table lacks columns {missing}")
    if not len(df):
        raise ValueError(f"{what}: no rows to plot")


NOISE_AXES = {
    "gaussian": ("Gaussian noise", "sigma: std of the added noise (pixel scale 0–1)"),
    "uniform": ("uniform noise", "half-width w: noise uniform in [−w, w] (pixel scale 0–1)"),
    "salt_pepper": ("salt-and-pepper noise", "fraction of pixels set to 0 or 1"),
}
"""Noise type -> (panel title, x-axis label): what a level means (neuroreg.evaluate.noise;
the noisy image is clipped to [0, 1])."""


def noise_axis(kind: str) -> tuple[str, str]:
    """(title, x label) of a noise type's panel; an unknown type keeps its name and 'level'."""
    return NOISE_AXES.get(str(kind), (f"{kind} noise", "level"))


def noise_accuracy(noise: pd.DataFrame, out: str | os.PathLike, group: str = "arm") -> list[Path]:
    """Accuracy vs noise level, one panel per noise type, a line per group with SEM bands."""
    _require(noise, ["noise", "level", "accuracy", group], "noise_accuracy")
    kinds = sorted(noise["noise"].dropna().unique())
    colors = arm_colors(sorted(noise[group].dropna().unique(), key=str))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 4.2), squeeze=False, layout="constrained")
    for ax, kind in zip(axes[0], kinds):
        _lines_with_bands(ax, noise[noise["noise"] == kind], "level", "accuracy", group, colors)
        title, xlabel = noise_axis(kind)
        ax.set(title=title, xlabel=wrap(xlabel, 34), ylabel="accuracy")
        ax.grid(alpha=0.3)
    legend_below(fig, axes[0][0], ncol=min(len(kinds) + 1, 3))
    fig.suptitle("Accuracy under random noise (mean ± SEM over seeds)")
    return save(fig, out)


def median_distance(summary: pd.DataFrame, out: str | os.PathLike, group: str = "arm") -> list[Path]:
    """Median minimal adversarial distance per group and norm: mean ± SEM over trials, seeds as dots."""
    _require(summary, ["norm", "median", group], "median_distance")
    norms = sorted(summary["norm"].dropna().unique())
    n_groups = summary[group].nunique()
    fig, axes = plt.subplots(1, len(norms), figsize=(max(4.8, 1.4 * n_groups + 1.5) * len(norms), 4.2),
                             squeeze=False, layout="constrained")
    for ax, norm in zip(axes[0], norms):
        d = summary[summary["norm"] == norm].copy()
        # A median of inf (most images unbroken) cannot be drawn as a bar; it is counted instead.
        d["median"] = pd.to_numeric(d["median"], errors="coerce")
        n_inf = np.isinf(d["median"]).groupby(d[group]).sum()
        d.loc[np.isinf(d["median"]), "median"] = np.nan
        stats = d.groupby(group)["median"].agg(["mean", "sem"]).sort_index()
        xs = np.arange(len(stats))
        colors = arm_colors(list(stats.index))
        ax.bar(xs, stats["mean"], yerr=stats["sem"].fillna(0.0), capsize=3, color=[colors[k] for k in stats.index],
               alpha=0.8)
        for i, name in enumerate(stats.index):
            vals = d.loc[d[group] == name, "median"].to_numpy(dtype=float)
            ax.scatter(np.full(len(vals), i), vals, s=8, color="k", zorder=3)
            if n_inf.get(name, 0):
                ax.annotate(f"{int(n_inf[name])} inf", (i, 0), ha="center", va="bottom", fontsize=8, color="k")
        ax.set_xticks(xs, [wrap(s, 16) for s in stats.index], fontsize=8)
        ax.set(title=f"median {norm} distance", ylabel="distance")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Minimal adversarial perturbation\n(median over images; mean ± SEM over seeds)")
    return save(fig, out)


def heatmap(
    trials: pd.DataFrame,
    metric: str,
    out: str | os.PathLike,
    x: str = "regularizer.alpha",
    y: str = "regularizer.th",
) -> list[Path]:
    """Mean of a metric over the trials of each (x, y) cell, annotated with its value and n."""
    _require(trials, [metric, x, y], "heatmap")
    d = trials[[x, y, metric]].copy()
    d[metric] = pd.to_numeric(d[metric], errors="coerce")
    mean = d.pivot_table(index=y, columns=x, values=metric, aggfunc="mean")
    count = d.pivot_table(index=y, columns=x, values=metric, aggfunc="count")
    fig, ax = plt.subplots(figsize=(1.2 * mean.shape[1] + 2.5, 0.8 * mean.shape[0] + 1.8))
    im = ax.imshow(mean.to_numpy(dtype=float), origin="lower", aspect="auto", cmap=CMAP)
    ax.set_xticks(range(mean.shape[1]), [f"{v:g}" if isinstance(v, float) else str(v) for v in mean.columns])
    ax.set_yticks(range(mean.shape[0]), [f"{v:g}" if isinstance(v, float) else str(v) for v in mean.index])
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            v = mean.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3g}\nn={int(count.iat[i, j])}", ha="center", va="center", fontsize=8, color="w")
    ax.set(xlabel=x, ylabel=y, title=f"{metric} (mean over seeds)")
    fig.colorbar(im, ax=ax, label=metric)
    return save(fig, out)


def parallel_coordinates(
    trials: pd.DataFrame, params: Sequence[str], metric: str, out: str | os.PathLike
) -> list[Path]:
    """One line per trial across the searched parameters and the metric, coloured by the metric.

    Hand-drawn rather than pandas.plotting.parallel_coordinates, which colours by a
    class column and shares one y scale; here every axis is scaled to its own range
    (categories spread evenly) and the colour is the continuous metric. A parameter that
    does not apply to a trial (analysis.applicable: the baseline's alpha and Th) sits at a
    separate '–' mark below its axis, never at the unused default value.
    """
    from analysis.applicable import blank_inapplicable
    from analysis.importance import design_label

    _require(trials, [*params, metric], "parallel_coordinates")
    cols = [*params, metric]
    d = blank_inapplicable(trials, params)
    d[metric] = pd.to_numeric(d[metric], errors="coerce")
    d = d[d[metric].notna()]
    if not len(d):
        raise ValueError("parallel_coordinates: no trial has a value of the metric")
    scaled = pd.DataFrame(index=d.index)
    ticks: dict[str, tuple[list[float], list[str]]] = {}
    any_missing = False
    for c in cols:
        v = d[c]
        present = v.notna()
        num = pd.to_numeric(v[present], errors="coerce")
        if num.notna().all() and len(num) and not pd.api.types.is_bool_dtype(v[present]):
            lo, hi = float(num.min()), float(num.max())
            span = hi - lo or 1.0
            scaled[c] = (pd.to_numeric(v, errors="coerce") - lo) / span
            uniq = sorted(num.unique())
            shown = uniq if len(uniq) <= 6 else [lo, hi]
            ticks[c] = ([(u - lo) / span for u in shown], [f"{u:.3g}" for u in shown])
        else:
            cats = sorted(v[present].astype(str).unique())
            pos = {k: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, k in enumerate(cats)}
            scaled[c] = v.astype(str).map(pos).where(present)
            ticks[c] = (list(pos.values()), cats)
        if not present.all():
            any_missing = True
            scaled.loc[~present, c] = _NOT_APPLICABLE
            ticks[c] = (ticks[c][0] + [_NOT_APPLICABLE], ticks[c][1] + ["–"])
    fig, ax = plt.subplots(figsize=(2.4 * len(cols) + 1.5, 4.2), layout="constrained")
    norm = plt.Normalize(d[metric].min(), d[metric].max())
    cmap = plt.get_cmap(CMAP)
    xs = np.arange(len(cols))
    for i in d.index:
        ax.plot(xs, scaled.loc[i, cols].to_numpy(dtype=float), color=cmap(norm(d.at[i, metric])), alpha=0.7, lw=1)
    for k, c in enumerate(cols):
        ax.axvline(k, color="k", lw=0.6)
        for pos, label in zip(*ticks[c]):
            ax.text(k + 0.04, pos, label, fontsize=8, va="center",
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    # The short names (alpha, not regularizer.alpha) fit under their axis without rotation.
    ax.set_xticks(xs, [wrap(c.rsplit(".", 1)[-1], 14) for c in cols], fontsize=9)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(cols) - 0.5)
    ax.set_ylim((_NOT_APPLICABLE if any_missing else 0.0) - 0.08, 1.08)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    ax.set_title(f"{metric}: one line per run, {design_label(d, params)}")
    if any_missing:
        ax.set_xlabel("–: the parameter does not apply to that run (e.g. Th of the baseline)", fontsize=8)
    return save(fig, out)


_NOT_APPLICABLE = -0.2
"""Scaled position of the '–' mark under a parallel-coordinates axis (its values span 0..1)."""


def network_order(name: str) -> tuple[int, str]:
    """conv1 < conv5 < conv9 < conv13 < conv17: the number in the tap name, then the name."""
    import re

    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else 10**6, name)


def layer_weights(trials: pd.DataFrame, out: str | os.PathLike, group: str = "arm") -> list[Path]:
    """Final softmax layer weights (columns layer_weight_<name>) per group: mean ± SEM bars."""
    # Network order (conv1, conv5, ..., conv17), not the columns' alphabetical order.
    cols = sorted((c for c in trials.columns if c.startswith("layer_weight_")), key=network_order)
    if not cols:
        raise ValueError("layer_weights: the trials table has no layer_weight_<name> columns")
    _require(trials, [group], "layer_weights")
    d = trials[[group, *cols]].dropna(subset=cols, how="all")
    if not len(d):
        raise ValueError("layer_weights: no trial reported layer weights")
    stats = d.groupby(group)[cols].agg(["mean", "sem"])
    groups = list(stats.index)
    width = 0.8 / max(len(groups), 1)
    xs = np.arange(len(cols))
    colors = arm_colors(groups)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 3.5, 4.2), layout="constrained")
    for k, name in enumerate(groups):
        means = [stats.loc[name, (c, "mean")] for c in cols]
        sems = [stats.loc[name, (c, "sem")] for c in cols]
        ax.bar(xs + (k - (len(groups) - 1) / 2) * width, means, width, yerr=np.nan_to_num(sems), capsize=2,
               color=colors[name], label=str(name))
    ax.set_xticks(xs, [c.removeprefix("layer_weight_") for c in cols])
    ax.axhline(1.0 / len(cols), color="k", ls=":", lw=0.8, label="uniform")
    ax.set(ylabel="softmax weight", title="Layer weights of the evaluated checkpoint (mean ± SEM)")
    legend_below(fig, ax)
    return save(fig, out)


def transfer_accuracy(transfer: pd.DataFrame, out: str | os.PathLike, group: str = "arm") -> list[Path]:
    """Accuracy vs epsilon of FGSM perturbations transferred from a surrogate, SEM bands."""
    _require(transfer, ["epsilon", "accuracy", group], "transfer_accuracy")
    fig, ax = plt.subplots(figsize=(5.0, 4.2), layout="constrained")
    _lines_with_bands(ax, transfer, "epsilon", "accuracy", group)
    ax.set(xlabel="epsilon (Linf)", ylabel="accuracy", title="Transferred FGSM (mean ± SEM over seeds)")
    ax.grid(alpha=0.3)
    legend_below(fig, ax, ncol=1)
    return save(fig, out)


def pareto(points: pd.DataFrame, front: pd.DataFrame, x: str, y: str, out: str | os.PathLike) -> list[Path]:
    """All configurations and their Pareto front in the plane of two objectives."""
    _require(points, [x, y], "pareto")
    fig, ax = plt.subplots(figsize=(5.0, 4.0), layout="constrained")
    ax.scatter(points[x], points[y], s=14, color="0.6", label="configurations")
    f = front.sort_values(x)
    ax.plot(f[x], f[y], "o-", color=plt.get_cmap(CMAP)(0.0), ms=5, label="Pareto front")
    ax.set(xlabel=x, ylabel=y, title="Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save(fig, out)


def robust_accuracy(adv: pd.DataFrame, n_eps: int = 40, group: str = "arm") -> pd.DataFrame:
    """Per trial, norm and epsilon: the fraction of attacked images whose minimal perturbation
    is larger than epsilon, i.e. the accuracy under the strongest attack of that budget.

    From the per-image ``adversarial`` table: a clean error (distance 0) is wrong at every
    epsilon, an unbroken image (distance inf) right at every one. The epsilon grid of a norm
    runs from 0 to the largest finite distance of that norm, so every curve ends near 0.
    """
    _require(adv, ["norm", "distance", "trial_id", group], "robust_accuracy")
    rows = []
    for norm, d in adv.groupby("norm", sort=True):
        dist = pd.to_numeric(d["distance"], errors="coerce")
        finite = dist[np.isfinite(dist)]
        top = float(finite.max()) if len(finite) else 1.0
        grid = np.linspace(0.0, top * 1.02 or 1.0, n_eps)
        for (g, trial), one in d.assign(_d=dist).groupby([group, "trial_id"], sort=True):
            v = one["_d"].to_numpy(dtype=float)
            acc = (v[None, :] > grid[:, None]).mean(axis=1)
            rows += [{group: g, "trial_id": trial, "norm": norm, "epsilon": e, "accuracy": a} for e, a in zip(grid, acc)]
    return pd.DataFrame(rows, columns=[group, "trial_id", "norm", "epsilon", "accuracy"])


def robust_accuracy_curves(adv: pd.DataFrame, out: str | os.PathLike, group: str = "arm") -> list[Path]:
    """Robust accuracy vs epsilon per norm (from the per-image minimal distances), SEM bands over seeds."""
    curves = robust_accuracy(adv, group=group)
    norms = sorted(curves["norm"].unique())
    fig, axes = plt.subplots(1, len(norms), figsize=(4.8 * len(norms), 3.8), squeeze=False, layout="constrained")
    for ax, norm in zip(axes[0], norms):
        _lines_with_bands(ax, curves[curves["norm"] == norm], "epsilon", "accuracy", group)
        ax.set(title=f"{norm} attacks", xlabel=f"epsilon ({norm})", ylabel="robust accuracy", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    legend_below(fig, axes[0][0])
    fig.suptitle("Accuracy under minimal adversarial perturbations (mean ± SEM over seeds)")
    return save(fig, out)


def _optuna_figure(kind: str, trials: pd.DataFrame, params: Sequence[str], metric: str, mode: str,
                   space: Mapping | None, out: str | os.PathLike, min_configs: int = 0) -> list[Path]:
    import optuna
    from optuna.visualization import matplotlib as ovm

    from analysis.importance import design_label, study_from_trials, too_few_configurations

    _require(trials, [*params, metric], f"optuna {kind}")
    if reason := too_few_configurations(trials, params, min_configs=min_configs):
        raise ValueError(f"optuna {kind}: {reason}")
    study = study_from_trials(trials, params, {metric: mode}, space)
    shown = [p for p in params if any(p in t.params for t in study.trials)]
    if len(study.trials) < 2 or not shown:
        raise ValueError(f"optuna {kind}: need >= 2 finished trials and a varying parameter")
    # Optuna switches matplotlib to its ggplot style globally; rc_context restores ours afterwards.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        draw = ovm.plot_contour if kind == "contour" else ovm.plot_slice
        axes = draw(study, params=shown, target_name=metric)
        return _finish_optuna(np.ravel(axes)[0].figure, kind, metric, design_label(trials, params), len(shown), out)


def _finish_optuna(fig: plt.Figure, kind: str, metric: str, design: str, n_params: int,
                   out: str | os.PathLike) -> list[Path]:
    # Optuna draws with Blues; the report's figures share viridis.
    for ax in fig.axes:
        for artist in ax.collections:
            if artist.get_array() is not None:
                artist.set_cmap(CMAP)
        ax.set_xlabel(ax.get_xlabel().rsplit(".", 1)[-1])
        ax.set_ylabel(ax.get_ylabel().rsplit(".", 1)[-1])
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":  # minor labels 7x10^-1, 8x10^-1, ... overprint: a few plain ticks
                axis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())
    title = f"{metric}: Optuna {kind} plot, {design}"
    if kind == "contour":
        fig.axes[0].set_title(title)
    else:
        fig.suptitle(title)
    fig.set_size_inches(max(5.0, 4.0 * n_params) if kind == "slice" else 6.0, 4.2)
    return save(fig, out)


def optuna_contour(trials: pd.DataFrame, params: Sequence[str], metric: str, out: str | os.PathLike,
                   mode: str = "max", space: Mapping | None = None, min_configs: int | None = None) -> list[Path]:
    """Optuna's contour plot of ``metric`` over pairs of searched parameters, from the trials
    replayed into a study: for a continuous search, where an alpha x Th grid would be mostly empty.

    ValueError below ``min_configs`` distinct configurations (default analysis.importance.MIN_CONFIGS):
    the contour interpolates between them."""
    from analysis.importance import MIN_CONFIGS

    return _optuna_figure("contour", trials, params, metric, mode, space, out,
                          MIN_CONFIGS if min_configs is None else min_configs)


def optuna_slice(trials: pd.DataFrame, params: Sequence[str], metric: str, out: str | os.PathLike,
                 mode: str = "max", space: Mapping | None = None) -> list[Path]:
    """Optuna's slice plot: ``metric`` against each searched parameter, one point per trial."""
    return _optuna_figure("slice", trials, params, metric, mode, space, out)
