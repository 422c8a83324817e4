"""Plots of the frequency suite (Li et al. 2023 Figs. 2d, 3b, 4 and 5).

Every function takes DataFrames in the record format of ``frequency.jsonl`` (see
``neuroreg.evaluate.frequency.run_frequency``) with one extra column naming the model
group (``group``) and, where curves of single models are drawn, a column naming the
model/trial (``unit``, default ``trial_id``; optional: without it each group is one
model). Each writes ``out_path`` as PNG, SVG and PDF (``analysis.plots.save``) and returns
the paths; groups are coloured from viridis as in ``analysis.plots``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from analysis.plots import CMAP, arm_colors, legend_below, save, wrap  # noqa: E402

__all__ = [
    "plot_spectrum_heatmaps",
    "plot_radial_profiles",
    "plot_hybrid_curves",
    "plot_distance_vs_f05",
    "plot_corruption_vs_frev",
]


def _rows(df: pd.DataFrame, kind: str, group: str, norm: str | None = None) -> pd.DataFrame:
    for col in ("kind", group):
        if col not in df.columns:
            raise ValueError(f"frequency records lack column {col!r} (columns: {list(df.columns)})")
    sel = df[df["kind"] == kind]
    if norm is not None:
        sel = sel[sel["norm"] == norm]
    if sel.empty:
        raise ValueError(
            f"no frequency records of kind={kind!r}" + (f", norm={norm!r}" if norm else "")
        )
    return sel


def _units(df: pd.DataFrame, unit: str) -> pd.Series:
    # Without a unit column every group counts as one model.
    return df[unit] if unit in df.columns else pd.Series("all", index=df.index)


def _groups(df: pd.DataFrame, group: str) -> list:
    return sorted(df[group].dropna().unique(), key=str)


def plot_spectrum_heatmaps(
    df: pd.DataFrame, group: str, out_path: str | Path, norm: str = "l2", unit: str = "trial_id"
) -> list[Path]:
    """Mean 2-D perturbation spectrum per group (``kind=spectrum2d``), log colour scale.

    Each model's spectrum is a fraction of its total power, so every model weighs the
    same in its group mean; each panel has its own colour range (as Li et al. Fig. 4a).
    """
    sel = _rows(df, "spectrum2d", group, norm).assign(_unit=lambda d: _units(d, unit))
    groups = _groups(sel, group)
    fig, axes = plt.subplots(
        1, len(groups), figsize=(3.6 * len(groups), 3.4), squeeze=False, layout="constrained"
    )
    for ax, g in zip(axes[0], groups, strict=True):
        sub = sel[sel[group] == g]
        img = (
            sub.groupby(["_unit", "fy", "fx"])["power"]
            .mean()
            .groupby(["fy", "fx"])
            .mean()
            .unstack("fx")
            .sort_index()
            .sort_index(axis=1)
        )
        values = img.to_numpy(dtype=float)
        positive = values[values > 0]
        lo = positive.min() if positive.size else 1e-12
        # Cells are centred on their frequencies: the extent runs half a step beyond them.
        dx = 1.0 / len(img.columns)
        dy = 1.0 / len(img.index)
        extent = (
            img.columns.min() - dx / 2,
            img.columns.max() + dx / 2,
            img.index.min() - dy / 2,
            img.index.max() + dy / 2,
        )
        im = ax.imshow(
            np.clip(values, lo, None),
            origin="lower",
            extent=extent,
            cmap=CMAP,  # perceptually uniform (jet is not)
            norm=LogNorm(vmin=lo, vmax=max(values.max(), lo * 10)),
        )
        # Wrapped so that neighbouring titles do not run into each other; the model count
        # only where a panel averages several.
        n = sub["_unit"].nunique()
        ax.set_title(wrap(g, 26) + (f"\nmean of {n} models" if n > 1 else ""), fontsize=9)
        ax.set_xlabel("f_x (cycles/px)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0][0].set_ylabel("f_y (cycles/px)")
    fig.suptitle(f"Minimal {norm} perturbation spectrum")
    return save(fig, out_path)


def plot_radial_profiles(
    df: pd.DataFrame, group: str, out_path: str | Path, norm: str = "l2", unit: str = "trial_id"
) -> list[Path]:
    """Cumulative radial power vs |f| (``kind=spectrum``): thin line per model, thick group mean.

    The cumulative power holds up to a bin's upper edge (``f_upper``), where it is drawn.
    """
    sel = _rows(df, "spectrum", group, norm).assign(_unit=lambda d: _units(d, unit))
    if "f_upper" not in sel.columns:
        raise ValueError("spectrum records lack column 'f_upper' (upper bin edge)")
    fig, ax = plt.subplots(figsize=(5, 4.4), layout="constrained")
    colours = arm_colors(_groups(sel, group))
    for g, colour in colours.items():
        sub = sel[sel[group] == g]
        for _, one in sub.groupby("_unit"):
            one = one.sort_values("f_upper")
            ax.plot(
                [0.0, *one["f_upper"]], [0.0, *one["cumulative"]], color=colour, lw=0.6, alpha=0.4
            )
        mean = sub.groupby("f_upper")["cumulative"].mean()
        ax.plot([0.0, *mean.index], [0.0, *mean], color=colour, lw=2.5, label=str(g))
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("|f| (cycles/px)")
    ax.set_ylabel("cumulative power fraction")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Radial profile of minimal {norm} perturbations")
    legend_below(fig, ax, title=group)
    return save(fig, out_path)


def plot_hybrid_curves(
    df: pd.DataFrame, group: str, out_path: str | Path, unit: str = "trial_id"
) -> list[Path]:
    """p_low - p_high vs mixing frequency c (``kind=hybrid``), as Li et al. Fig. 5a."""
    sel = _rows(df, "hybrid", group).assign(_unit=lambda d: _units(d, unit))
    sel = sel.assign(diff=sel["p_low"] - sel["p_high"])
    fig, ax = plt.subplots(figsize=(5, 4.4), layout="constrained")
    colours = arm_colors(_groups(sel, group))
    for g, colour in colours.items():
        sub = sel[sel[group] == g]
        for _, one in sub.groupby("_unit"):
            one = one.sort_values("c")
            ax.plot(one["c"], one["diff"], color=colour, lw=0.6, alpha=0.4)
        mean = sub.groupby("c")["diff"].mean()
        ax.plot(mean.index, mean.to_numpy(), color=colour, lw=2.5, label=str(g))
    ax.axhline(0.0, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("mixing frequency c (fraction of Nyquist)")
    ax.set_ylabel("p_low - p_high")
    ax.set_ylim(-1.05, 1.05)
    legend_below(fig, ax, title=group)
    return save(fig, out_path)


def _scatter(points: pd.DataFrame, group: str, x: str, y: str, ax: plt.Axes) -> None:
    for g, colour in arm_colors(_groups(points, group)).items():
        sub = points[points[group] == g]
        ax.scatter(sub[x], sub[y], color=colour, label=str(g), s=30)


def _per_unit(df: pd.DataFrame, unit: str, group: str) -> list[str]:
    return [unit, group] if unit in df.columns else [group]


def plot_distance_vs_f05(
    freq: pd.DataFrame,
    adversarial_summary: pd.DataFrame,
    group: str,
    out_path: str | Path,
    norm: str = "l2",
    unit: str = "trial_id",
) -> list[Path]:
    """Median minimal adversarial distance vs f0.5 per model (Li et al. Fig. 4c).

    ``freq``: frequency records (the ``summary`` rows with ``metric=f05`` are used);
    ``adversarial_summary``: ``adversarial_summary`` records (``norm, median``); both
    with ``group`` and, to pair models, ``unit``.
    """
    f05 = _rows(freq, "summary", group)
    f05 = f05[(f05["metric"] == "f05") & (f05["norm"] == norm)]
    adv = adversarial_summary[adversarial_summary["norm"] == norm]
    if adv.empty or f05.empty:
        raise ValueError(f"need f05 summaries and adversarial summaries for norm={norm!r}")
    keys = _per_unit(f05, unit, group)
    points = f05[keys + ["f05"]].merge(adv[keys + ["median"]], on=keys)
    if points.empty:
        raise ValueError(f"no model has both an f05 and an adversarial summary (joined on {keys})")
    fig, ax = plt.subplots(figsize=(5, 4.4), layout="constrained")
    _scatter(points, group, "f05", "median", ax)
    ax.set_xlabel("half-power frequency f0.5 (cycles/px)")
    ax.set_ylabel(f"median minimal {norm} distance")
    legend_below(fig, ax, title=group)
    return save(fig, out_path)


def plot_corruption_vs_frev(
    freq: pd.DataFrame,
    corruptions: pd.DataFrame,
    group: str,
    out_path: str | Path,
    unit: str = "trial_id",
) -> list[Path]:
    """Mean corruption accuracy vs reversal frequency f_rev per model (Li et al. Fig. 5b).

    ``corruptions``: ``corruptions`` records (``corruption, severity, accuracy``); the
    accuracy is the mean over all corruptions and severities of a model.
    """
    frev = _rows(freq, "summary", group)
    frev = frev[frev["metric"] == "f_rev"]
    if frev.empty or corruptions.empty:
        raise ValueError("need f_rev summaries and corruption records")
    keys = _per_unit(frev, unit, group)
    acc = corruptions.groupby(keys, as_index=False)["accuracy"].mean()
    points = frev[keys + ["f_rev"]].merge(acc, on=keys)
    if points.empty:
        raise ValueError(f"no model has both an f_rev and corruption records (joined on {keys})")
    fig, ax = plt.subplots(figsize=(5, 4.4), layout="constrained")
    _scatter(points, group, "f_rev", "accuracy", ax)
    ax.set_xlabel("reversal frequency f_rev (fraction of Nyquist)")
    ax.set_ylabel("mean corruption accuracy")
    legend_below(fig, ax, title=group)
    return save(fig, out_path)
