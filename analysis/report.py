"""A sweep's report: ``python -m analysis.report SWEEP [--results ROOT] [--out DIR] [--html]``.

SWEEP is a sweep name gathered in ROOT, or a sweep folder (gathered first if its tables
are not there yet). Writes ``DIR/report.md`` with tables and plots (PNG + SVG + PDF under
``DIR/plots/``): trials by status and their errors, the best configuration, every
regularizer against the baseline (paired by seed, 95 % CI, corrected p, power), noise
accuracy, median adversarial distances and robust accuracy vs epsilon, transferred FGSM,
corruptions, frequency plots, the search surface (heat map of a grid, Optuna contour and
slice plots of a continuous search), parameter importance and the Pareto front of
multi-objective sweeps. Prints the noise-accuracy and median-distance tables to stdout.
``--html`` also writes ``DIR/report.html`` (analysis.html_report). Several sweeps:
``DIR/comparison.md``, arms keyed by configuration (arm_key) across them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import plots, store
from analysis.gather import (
    _NOT_IDENTITY,
    _arm_labels,
    default_results_root,
    gather_report,
    is_seed_column,
)
from analysis.importance import param_importances, pareto_front
from analysis.query import config_columns, default_root, load, run_cli, sweep_meta
from analysis.stats import (
    CORRECTION,
    KEY_METRICS,
    arm_summary,
    best_arm,
    compare_family,
    family_metrics,
    finished,
    varying_columns,
)
from neuroreg.atomic import atomic_write_text

# --- formatting ------------------------------------------------------------------


def fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def pm(mean: float, sem: float, digits: int = 4) -> str:
    """'mean ± sem' (just the mean when the SEM is undefined, e.g. one seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if sem is None or (isinstance(sem, float) and math.isnan(sem)):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {sem:.2g}"


def md_table(df: pd.DataFrame, digits: int = 4) -> str:
    """A Markdown pipe table (hand-written: pandas' to_markdown needs the tabulate package)."""
    if not len(df):
        return "_(no rows)_\n"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


# --- the tables the CLI prints --------------------------------------------------------


def noise_table(noise: pd.DataFrame) -> pd.DataFrame:
    """arm x (noise, level): 'mean ± sem' of accuracy over the arm's trials (seeds)."""
    if not len(noise):
        return pd.DataFrame()
    s = noise.groupby(["arm", "noise", "level"])["accuracy"].agg(["mean", "sem"]).reset_index()
    s["cell"] = [pm(m, e, 3) for m, e in zip(s["mean"], s["sem"])]
    s["col"] = [f"{k} {lv:g}" for k, lv in zip(s["noise"], s["level"])]
    order = list(dict.fromkeys(s.sort_values(["noise", "level"])["col"]))
    wide = s.pivot(index="arm", columns="col", values="cell")[order]
    n = noise.groupby("arm")["trial_id"].nunique().rename("n")
    return wide.join(n).reset_index()[["arm", "n", *order]]


def distance_table(summary: pd.DataFrame) -> pd.DataFrame:
    """arm x norm: per-trial median distance, 'mean ± sem' over the arm's trials."""
    if not len(summary):
        return pd.DataFrame()
    s = summary.groupby(["arm", "norm"])["median"].agg(["mean", "sem"]).reset_index()
    s["cell"] = [pm(m, e, 3) for m, e in zip(s["mean"], s["sem"])]
    wide = s.pivot(index="arm", columns="norm", values="cell")
    wide.columns = [f"median {c}" for c in wide.columns]
    n = summary.groupby("arm")["trial_id"].nunique().rename("n")
    return wide.join(n).reset_index()[["arm", "n", *wide.columns]]


def correct_median_distances(adv: pd.DataFrame) -> pd.DataFrame:
    """Per trial and norm: the median minimal distance over the test images the model
    classifies correctly (unbroken ones count +inf), as columns ``median_<norm>_correct``.

    The papers' median counts clean errors as 0, so once clean accuracy falls below 50 %
    it is 0 whatever the model's robustness; this median is the one that still tells two
    weak models apart.
    """
    if not len(adv):
        return pd.DataFrame(columns=["sweep", "trial_id"])
    hit = adv[adv["attack"] != "misclassified"]
    med = hit.groupby(["sweep", "trial_id", "norm"])["distance"].median().reset_index()
    wide = med.pivot(index=["sweep", "trial_id"], columns="norm", values="distance")
    wide.columns = [f"median_{c}_correct" for c in wide.columns]
    return wide.reset_index()


def console_tables(root: str | os.PathLike, sweep: str) -> str:
    """The noise-accuracy and median-distance tables of a sweep, as plain text."""
    parts = []
    noise = _finished_rows(load("noise", root, [sweep]))
    t = noise_table(noise)
    parts.append("Noise accuracy (mean ± SEM over seeds)\n" + (t.to_string(index=False) if len(t) else "(no noise records)"))
    adv = _finished_rows(load("adversarial_summary", root, [sweep]))
    t = distance_table(adv)
    parts.append("Median minimal adversarial distance (mean ± SEM over seeds)\n"
                 + (t.to_string(index=False) if len(t) else "(no adversarial records)"))
    return "\n\n".join(parts)


def _finished_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "TERMINATED"] if "status" in df.columns and len(df) else df


# --- the data of a report: one sweep, or several keyed by configuration ----------------------


@dataclass
class Frames:
    """What a report shows, loaded once: trials and the finished trials' record tables.

    ``done`` holds the finished trials with the per-trial median distances over correctly
    classified images merged on. Across sweeps (``by_configuration``) ``arm`` is a label of
    the configuration, ``condition`` its condition_key, and repeats of one configuration
    and seed in several sweeps are averaged in ``done`` (``repeats`` counts them).
    """

    sweeps: list[str]
    trials: pd.DataFrame
    done: pd.DataFrame
    noise: pd.DataFrame
    adv: pd.DataFrame
    adv_sum: pd.DataFrame
    configs: list[str]
    repeats: int = 0
    spec: dict[str, Any] = field(default_factory=dict)


def load_frames(sweeps: Sequence[str], root: str | os.PathLike, by_config: bool = False) -> Frames:
    """The tables of these sweeps; with ``by_config`` arms are labelled across sweeps by arm_key."""
    sweeps = list(sweeps)
    trials = load("trials", root, sweeps)
    configs = config_columns(root, sweeps)
    noise = _finished_rows(load("noise", root, sweeps))
    adv = _finished_rows(load("adversarial", root, sweeps))
    adv_sum = _finished_rows(load("adversarial_summary", root, sweeps))
    repeats = 0
    if by_config:
        trials = by_configuration(trials, configs)
        arms = trials.set_index(["sweep", "trial_id"])["arm"]
        noise, adv, adv_sum = (
            d.assign(arm=arms.reindex(pd.MultiIndex.from_frame(d[["sweep", "trial_id"]])).to_numpy()) if len(d) else d
            for d in (noise, adv, adv_sum)
        )
    done = finished(trials)
    if len(adv) and len(done):
        done = done.merge(correct_median_distances(adv), on=["sweep", "trial_id"], how="left")
    if by_config and len(done):
        done, repeats = merge_repeats(done)
    spec = sweep_meta(root, sweeps[0]).get("sweep_spec") or {} if len(sweeps) == 1 else {}
    return Frames(sweeps, trials, done, noise, adv, adv_sum, configs, repeats, spec)


def by_configuration(trials: pd.DataFrame, configs: Sequence[str]) -> pd.DataFrame:
    """Trials of several sweeps with ``arm`` relabelled from the configuration fields that vary
    across all of them (as gather labels one sweep) and ``condition`` set to condition_key.

    The label is drawn from the fields arm_key hashes (no seeds, evaluation or run-time
    fields), so one label is one arm_key; a sweep's own labels name only what varies in it.
    """
    ident = [c for c in configs if c in trials.columns and not is_seed_column(c)
             and c not in _NOT_IDENTITY and not c.startswith("evaluation.")]
    labels = _arm_labels(trials, ident)
    out = trials.assign(arm=labels["arm"], condition=trials["condition_key"], baseline=labels["baseline"])
    per_key = out.groupby("arm")["arm_key"].nunique()
    if (per_key > 1).any():  # fields outside the label tell the arms apart: name the key too
        clash = out["arm"].isin(per_key[per_key > 1].index)
        out.loc[clash, "arm"] = out.loc[clash, "arm"] + " [" + out.loc[clash, "arm_key"].str[:6] + "]"
    return out


def merge_repeats(done: pd.DataFrame, seed_col: str = "train.seed") -> tuple[pd.DataFrame, int]:
    """One row per (arm_key, seed): a configuration and seed trained in several sweeps is one
    experiment repeated, so its metrics are averaged (the seed pairs it with its baseline)."""
    if seed_col not in done.columns:
        return done, 0
    keys = ["arm_key", seed_col]
    dup = done.duplicated(keys, keep=False)
    if not dup.any():
        return done, 0
    numeric = [c for c in done.columns if c not in keys and pd.api.types.is_numeric_dtype(done[c])
               and not pd.api.types.is_bool_dtype(done[c])]
    g = done.groupby(keys, sort=False, dropna=False)
    merged = g.first().drop(columns=numeric).join(g[numeric].mean()).reset_index()[list(done.columns)]
    return merged, int(len(done) - len(merged))


# --- the report ---------------------------------------------------------------------------


class _Doc:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.lines: list[str] = []
        self.plots: list[Path] = []

    def add(self, *text: str) -> None:
        self.lines.extend(text)

    def plot(self, title: str, make: Callable[[Path], list[Path]], name: str) -> None:
        """Draw a plot; a failure becomes a note in the report, never a failed report."""
        try:
            paths = make(self.out_dir / "plots" / name)
        except Exception as e:  # noqa: BLE001 -- one plot must not cost the whole report
            self.add(f"_{title}: not drawn ({type(e).__name__}: {e})_", "")
            return
        self.plots += paths
        png = next(p for p in paths if p.suffix == ".png")
        rel = png.relative_to(self.out_dir).as_posix()
        others = [f"[{p.suffix[1:].upper()}]({p.relative_to(self.out_dir).as_posix()})" for p in paths if p != png]
        link = f" ({', '.join(others)})" if others else ""
        self.add(f"![{title}]({rel}){link}", "")


def searched_params(spec: dict[str, Any], trials: pd.DataFrame, configs: Sequence[str]) -> list[str]:
    """The sweep's search-space keys (sweep.yaml), else the config columns that vary."""
    space = spec.get("space")
    if isinstance(space, dict) and space:
        return [k for k in space if k in trials.columns]
    return [c for c in varying_columns(trials, configs) if not is_seed_column(c)]


def _relative(path: Any, root: str | os.PathLike) -> str:
    """``path`` relative to the results root, so that a report holds no machine paths."""
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return "–"
    p, r = Path(str(path)), Path(root).resolve()
    try:
        return p.resolve().relative_to(r).as_posix() or "."
    except ValueError:
        return p.name  # outside the results folder: its name only


def _family_table(fam: pd.DataFrame) -> pd.DataFrame:
    t = fam[["metric", "arm", "test", "n", "mean", "baseline_mean", "diff"]].copy()
    t["95 % CI"] = [f"[{fmt(lo, 3)}, {fmt(hi, 3)}]" for lo, hi in zip(fam["ci_low"], fam["ci_high"])]
    t["p"], t["p (BH)"] = fam["p"], fam["p_adj"]
    t["power"] = fam["power"]
    t["seeds for 80 %"] = fam["n_80"]
    return t


def _family_text(fam: pd.DataFrame) -> str:
    """How the family was tested, and its headline: the significant rows and the power."""
    sig = fam[fam["p_adj"] < 0.05]
    lines = [
        "Difference = arm − baseline of the same condition, per metric (no metric is pooled "
        "across noise types or levels). Paired t-test over the seeds both arms share "
        "(`scipy.stats.ttest_rel`), Welch's t-test where seeds do not match; 95 % CI of the "
        f"difference from scipy; p corrected over all {len(fam)} rows of this table "
        f"({CORRECTION}, `scipy.stats.false_discovery_control`). *power*: the test's power for the "
        "observed effect and variance at this number of seeds; *seeds for 80 %*: seeds per arm "
        "that would give 80 % power.",
        "",
    ]
    if len(sig):
        lines.append(f"**Significant after correction ({len(sig)} of {len(fam)}):** " + "; ".join(
            f"{r.metric} {r.arm}: {r.diff:+.4g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}], p_BH = {r.p_adj:.2g}"
            for r in sig.itertuples()) + ".")
    else:
        lines.append(f"**No difference is significant after correction** (0 of {len(fam)}).")
    return "\n".join(lines)


def _collapse_section(doc: _Doc, done: pd.DataFrame) -> None:
    """Collapse rate per arm and the comparison without the collapsed runs."""
    if "collapsed" not in done.columns:
        return
    active = done[~done["baseline"].astype(bool)]
    if not len(active) or active["collapsed"].isna().all():
        return
    col = active["collapsed"].fillna(False).astype(bool)
    t = active.assign(collapsed=col).groupby("arm").agg(
        n=("collapsed", "size"), collapsed=("collapsed", "sum"),
        dominant=("dominant_layer", lambda s: ", ".join(f"{k} x{v}" for k, v in s.value_counts().items())),
    ).reset_index()
    t["rate"] = t["collapsed"] / t["n"]
    doc.add("### Layer-weight collapse (evaluated checkpoint)", "",
            "A run has collapsed when one layer holds >= 0.99 of the softmax layer weight.", "", md_table(t))
    if col.any():
        keep = done[done["baseline"].astype(bool) | ~done["collapsed"].fillna(False).astype(bool)]
        fam = compare_family(keep, family_metrics(keep))
        if not len(fam) or fam["n"].max() < 2:
            doc.add(f"Without the collapsed runs: {int((~col).sum())} regularized run(s) left, "
                    "too few to compare.", "")
        else:
            doc.add("Without the collapsed runs (their seeds drop out of the pairing):", "",
                    _family_text(fam), "", md_table(_family_table(fam)))


def build_report(
    sweep: str,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    metric: str | None = None,
    mode: str | None = None,
    objectives: dict[str, str] | None = None,
) -> Path:
    """Write ``out_dir/report.md`` (+ plots) for a gathered sweep; returns the report path."""
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = sweep_meta(root, sweep)
    spec = meta.get("sweep_spec") or {}
    metric, mode = metric_mode(spec, metric, mode)
    trials = load("trials", root, [sweep])
    configs = config_columns(root, [sweep])
    done = finished(trials)
    params = searched_params(spec, trials, configs)
    doc = _Doc(out_dir)

    doc.add(f"# Sweep `{sweep}`", "")
    if spec.get("description"):
        doc.add(str(spec["description"]), "")
    doc.add(f"Source: `{_relative(meta.get('sweep_dir', '?'), root)}`; tables: "
            f"`{_relative(store.tables_dir(root), root)}` (paths relative to the results folder).", "")
    status = trials["status"].value_counts().rename_axis("status").reset_index(name="trials")
    doc.add("## Trials", "", md_table(status))
    if params:
        doc.add("Searched parameters: " + ", ".join(f"`{p}`" for p in params) + ".", "")
    seeds = sorted(int(v) for v in trials["train.seed"].dropna().unique()) if "train.seed" in trials else []
    doc.add(f"Arms (configurations without the seed): {trials['arm'].nunique()}; seeds: {fmt(list(seeds))}.", "")
    errors = trials[trials["status"] == "ERROR"]
    if len(errors):
        e = errors[["trial_id", "arm", "error"]].copy()
        e["error"] = e["error"].fillna("").map(lambda s: s.splitlines()[-1][:200] if s else "")
        doc.add("### Errored trials", "", md_table(e))
    problems = meta.get("problems") or []
    if problems:
        doc.add("### Gather problems", "", *[f"- {p}" for p in problems], "")

    # Best configuration.
    doc.add(f"## Best configuration (by `{metric}`, {mode}, mean over seeds)", "")
    best = best_arm(done, metric, mode)
    if best is None:
        doc.add(f"_No finished trial reports `{metric}`._", "")
    else:
        doc.add(f"**{best['arm']}**: {metric} = {pm(best[f'{metric}_mean'], best[f'{metric}_sem'])} "
                f"over {int(best['n'])} trial(s).", "")
        rows = done[done["arm"] == best["arm"]]
        vals = pd.to_numeric(rows[metric], errors="coerce")
        top = rows.loc[vals.idxmax() if mode == "max" else vals.idxmin()]
        shown = [c for c in params if c in top.index] or [c for c in configs if c in top.index][:12]
        doc.add(md_table(pd.DataFrame({"field": shown, "value": [top[c] for c in shown]})))
        doc.add(f"Best single trial: `{top['trial_id']}` ({metric} = {fmt(top[metric])}), "
                f"checkpoint `{_relative(top['checkpoint'], root)}`.", "")

    # Per-arm summary and comparison with the baseline.
    # No status column without the join; merging into `done` keeps finished trials only.
    adv_images = _finished_rows(load("adversarial", root, [sweep]))
    if len(adv_images) and len(done):
        done = done.merge(correct_median_distances(adv_images), on=["sweep", "trial_id"], how="left")
    extra = [c for c in ("median_l2_correct", "median_linf_correct") if c in done.columns]
    metrics = [m for m in dict.fromkeys([metric, *KEY_METRICS, *extra]) if m in done.columns]
    if metrics and len(done):
        s = arm_summary(done, metrics)
        table = pd.DataFrame({"arm": s["arm"], "n": s["n"]})
        for m in metrics:
            table[m] = [pm(a, b) for a, b in zip(s[f"{m}_mean"], s[f"{m}_sem"])]
        doc.add("## Arms (mean ± SEM over seeds)", "", md_table(table))
    doc.add("## Against the baseline", "")
    fam = compare_family(done, family_metrics(done, [m for m in (metric,) if m != "best_val_acc"]))
    if len(fam):
        doc.add(_family_text(fam), "", md_table(_family_table(fam)))
        _collapse_section(doc, done)
    else:
        doc.add("_No unregularized baseline arm (target none or alpha 0) in this sweep._", "")

    # Robustness tables and plots.
    noise = _finished_rows(load("noise", root, [sweep]))
    if len(noise):
        doc.add("## Random noise", "", md_table(noise_table(noise)))
        doc.plot("noise accuracy", lambda p: plots.noise_accuracy(noise, p), "noise_accuracy")
    adv_sum = _finished_rows(load("adversarial_summary", root, [sweep]))
    if len(adv_sum):
        doc.add("## Minimal adversarial perturbations", "",
                "Median over all attacked test images, clean errors counted as distance 0 "
                "(the papers' convention); `median_*_correct` in the tables above is the median "
                "over the images the model classifies correctly.", "",
                md_table(distance_table(adv_sum)))
        doc.plot("median adversarial distance", lambda p: plots.median_distance(adv_sum, p), "median_distance")
    if len(adv_images):
        doc.plot("robust accuracy vs epsilon", lambda p: plots.robust_accuracy_curves(adv_images, p),
                 "robust_accuracy")
    transfer = _finished_rows(load("transfer", root, [sweep]))
    if len(transfer):
        t = transfer.groupby(["arm", "epsilon"])["accuracy"].agg(["mean", "sem", "count"]).reset_index()
        doc.add("## Transferred FGSM", "", md_table(t))
        doc.plot("transferred FGSM", lambda p: plots.transfer_accuracy(transfer, p), "transfer")
    corr = _finished_rows(load("corruptions", root, [sweep]))
    if len(corr):
        key = "frequency" if "frequency" in corr.columns else "corruption"
        per_trial = corr.groupby(["arm", "trial_id", key])["accuracy"].mean().reset_index()
        t = per_trial.groupby(["arm", key])["accuracy"].agg(["mean", "sem", "count"]).reset_index()
        doc.add("## Common corruptions", "", md_table(t))
    freq = _finished_rows(load("frequency", root, [sweep]))
    if len(freq):
        _frequency_section(doc, freq, adv_sum, corr)

    # Sweep structure.
    doc.add("## Sweep structure", "")
    active = done[~done["baseline"].astype(bool)] if "baseline" in done else done
    continuous = continuous_params(spec, active)
    if continuous and len(active):
        # A continuous search samples each value once: an alpha x Th grid would be mostly
        # empty cells, so Optuna's contour and slice plots show the surface instead.
        modes = {metric: mode, **(objectives or _spec_objectives(spec) or {})}
        for m, d in modes.items():
            if m in active.columns and active[m].notna().any():
                doc.plot(f"Optuna contour: {m}", lambda p, m=m, d=d: plots.optuna_contour(
                    active, continuous, m, p, d, spec.get("space")), f"contour_{m}")
                doc.plot(f"Optuna slice: {m}", lambda p, m=m, d=d: plots.optuna_slice(
                    active, continuous, m, p, d, spec.get("space")), f"slice_{m}")
    elif {"regularizer.alpha", "regularizer.th"} <= set(active.columns) and len(active) and all(
        active[c].nunique() > 1 for c in ("regularizer.alpha", "regularizer.th")
    ):
        for m in dict.fromkeys([metric, "noise_acc_mean", "median_l2"]):
            if m in active.columns and active[m].notna().any():
                name = "heatmap_alpha_th" if m == metric else f"heatmap_alpha_th_{m}"
                doc.plot(f"alpha x Th: {m}", lambda p, m=m: plots.heatmap(active, m, p), name)
    if params and metric in done.columns:
        doc.plot("parallel coordinates", lambda p: plots.parallel_coordinates(done, params, metric, p),
                 "parallel_coordinates")
    if any(c.startswith("layer_weight_") for c in active.columns) and len(active):
        doc.plot("layer weights", lambda p: plots.layer_weights(active, p), "layer_weights")

    # Importance and Pareto front.
    if params and metric in done.columns:
        doc.add(f"## Parameter importance for `{metric}` (Optuna fANOVA)", "")
        try:
            imp = param_importances(done, params, metric, mode, spec.get("space"))
            doc.add(md_table(imp.rename_axis("parameter").reset_index()))
        except (ValueError, KeyError, RuntimeError) as e:
            doc.add(f"_Not computed: {e}_", "")
    objectives = objectives or _spec_objectives(spec)
    if objectives and len(objectives) >= 2:
        doc.add("## Pareto front (arm means over seeds)", "")
        missing = [m for m in objectives if m not in done.columns]
        if missing:
            doc.add(f"_Not computed: no trial reports {missing}._", "")
        else:
            means = done.groupby("arm")[list(objectives)].mean().reset_index()
            front = pareto_front(means, objectives)
            doc.add(f"Objectives: {', '.join(f'{m} ({d})' for m, d in objectives.items())}.", "", md_table(front))
            names = list(objectives)
            doc.plot("Pareto front", lambda p: plots.pareto(means, front, names[0], names[1], p), "pareto")

    path = out_dir / "report.md"
    return atomic_write_text(path, "\n".join(doc.lines) + "\n")


def build_comparison(
    sweeps: Sequence[str],
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    metric: str = "best_val_acc",
) -> tuple[Path, Frames]:
    """Write ``out_dir/comparison.md`` (+ plots): the arms of several sweeps keyed by configuration.

    Trials are grouped by arm_key, not by sweep or by a sweep's own arm label, and every
    regularized arm is compared with the baseline of its condition_key wherever that
    baseline was trained, with the same statistics as within one sweep (compare_family).
    """
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = load_frames(sweeps, root, by_config=True)
    done, doc = frames.done, _Doc(out_dir)
    doc.add(f"# Comparison of {len(frames.sweeps)} sweeps, arms keyed by configuration", "")
    doc.add("Sweeps: " + ", ".join(f"`{s}` (`{_relative(sweep_meta(root, s).get('sweep_dir', '?'), root)}`)"
                                   for s in frames.sweeps) + " (paths relative to the results folder).", "")
    doc.add("An arm is one `arm_key` (the trained configuration without its seed, the same hash in every "
            "sweep); its label names the configuration fields that vary across these sweeps. Its "
            "baseline is the unregularized arm of the same `condition_key`, from any of the sweeps.", "")
    t = frames.trials
    arms = t.groupby("arm").agg(arm_key=("arm_key", "first"), sweeps=("sweep", lambda v: ", ".join(sorted(set(v)))),
                                trials=("trial_id", "size")).reset_index()
    doc.add("## Arms and where they were trained", "", md_table(arms))
    if frames.repeats:
        doc.add(f"{frames.repeats} finished trial(s) repeat a configuration and seed of another sweep; "
                "their metrics are averaged into one seed before the statistics.", "")
    metrics = [m for m in dict.fromkeys([metric, *KEY_METRICS, "median_l2_correct", "median_linf_correct"])
               if m in done.columns]
    if metrics and len(done):
        s = arm_summary(done, metrics)
        table = pd.DataFrame({"arm": s["arm"], "n": s["n"]})
        for m in metrics:
            table[m] = [pm(a, b) for a, b in zip(s[f"{m}_mean"], s[f"{m}_sem"])]
        doc.add("## Arms (mean ± SEM over seeds)", "", md_table(table))
    doc.add("## Against the baseline", "")
    fam = compare_family(done, family_metrics(done, [m for m in (metric,) if m != "best_val_acc"]))
    if len(fam):
        doc.add(_family_text(fam), "", md_table(_family_table(fam)))
    else:
        doc.add("_No arm has a baseline of its condition in these sweeps._", "")
    if len(frames.noise):
        doc.add("## Random noise", "", md_table(noise_table(frames.noise)))
        doc.plot("noise accuracy", lambda p: plots.noise_accuracy(frames.noise, p), "noise_accuracy")
    if len(frames.adv_sum):
        doc.add("## Minimal adversarial perturbations", "", md_table(distance_table(frames.adv_sum)))
        doc.plot("median adversarial distance", lambda p: plots.median_distance(frames.adv_sum, p), "median_distance")
    if len(frames.adv):
        doc.plot("robust accuracy vs epsilon", lambda p: plots.robust_accuracy_curves(frames.adv, p), "robust_accuracy")
    return atomic_write_text(out_dir / "comparison.md", "\n".join(doc.lines) + "\n"), frames


def metric_mode(spec: dict[str, Any], metric: str | None, mode: str | None) -> tuple[str, str]:
    """The metric and mode of "best": the given ones, else the sweep's, else best_val_acc, max."""
    metric = metric or spec.get("metric") or "best_val_acc"
    mode = mode or spec.get("mode") or "max"
    if mode not in ("max", "min"):
        raise ValueError(f"--mode must be max or min, got {mode!r}")
    return metric, mode


def continuous_params(spec: dict[str, Any], trials: pd.DataFrame) -> list[str]:
    """The searched parameters drawn from a continuous distribution (uniform, loguniform, int)
    that vary among these trials."""
    space = spec.get("space") or {}
    return [k for k, v in space.items() if isinstance(v, dict) and {"uniform", "loguniform", "int"} & set(v)
            and k in trials.columns and trials[k].nunique() > 1]


def _spec_objectives(spec: dict[str, Any]) -> dict[str, str] | None:
    search = spec.get("search") or {}
    ms, mo = search.get("metrics"), search.get("modes")
    if isinstance(ms, list) and isinstance(mo, list) and len(ms) == len(mo) and len(ms) >= 2:
        return dict(zip(ms, mo))
    return None


def _frequency_section(doc: _Doc, freq: pd.DataFrame, adv_sum: pd.DataFrame, corr: pd.DataFrame) -> None:
    doc.add("## Frequency analysis", "")
    summ = freq[freq["kind"] == "summary"] if "metric" in freq.columns else freq.iloc[0:0]
    if len(summ):
        key = ["arm", "metric"] + (["norm"] if "norm" in summ.columns else [])
        t = summ.groupby(key, dropna=False)["value"].agg(["mean", "sem", "count"]).reset_index()
        doc.add("f0.5: radius where the cumulative radial power of the minimal perturbations reaches 50 %; "
                "f_rev: mixing frequency where p_low = p_high on hybrid images.", "", md_table(t))
    try:
        from analysis import frequency_plots as fp
    except ImportError as e:
        doc.add(f"_Frequency plots unavailable ({e})._", "")
        return
    kinds = set(freq["kind"].dropna())
    norms = sorted(freq["norm"].dropna().unique()) if "norm" in freq.columns else []
    for norm in norms:
        if "spectrum2d" in kinds:
            doc.plot(f"perturbation spectra ({norm})",
                     lambda p, n=norm: fp.plot_spectrum_heatmaps(freq, "arm", p, norm=n), f"spectrum_{norm}")
        if "spectrum" in kinds:
            doc.plot(f"radial profiles ({norm})",
                     lambda p, n=norm: fp.plot_radial_profiles(freq, "arm", p, norm=n), f"radial_{norm}")
        has_f05 = "metric" in freq.columns and ((freq["metric"] == "f05") & (freq["norm"] == norm)).any()
        if len(adv_sum) and has_f05:
            doc.plot(f"median distance vs f0.5 ({norm})",
                     lambda p, n=norm: fp.plot_distance_vs_f05(freq, adv_sum, "arm", p, norm=n), f"distance_f05_{norm}")
    if "hybrid" in kinds:
        doc.plot("hybrid images: p_low - p_high", lambda p: fp.plot_hybrid_curves(freq, "arm", p), "hybrid")
        if len(corr):
            doc.plot("corruption accuracy vs f_rev", lambda p: fp.plot_corruption_vs_frev(freq, corr, "arm", p),
                     "corruption_frev")


# --- CLI ----------------------------------------------------------------------------------


def _objectives(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, _, d = item.partition(":")
        if d not in ("max", "min"):
            raise ValueError(f"--pareto: {item!r} must be METRIC:max or METRIC:min")
        out[name.strip()] = d
    return out


def _resolve(sweep: str, results: str | None, regather: bool) -> tuple[Path, str]:
    """(results root, gathered sweep name) of a SWEEP argument; ValueError with the fix when it is not gathered."""
    folder = Path(sweep)
    if folder.is_dir():
        root = Path(results) if results else default_results_root(folder)
        name = folder.resolve().name
        if regather or name not in store.sweeps(root):
            _, problems = gather_report(folder, root)
            print(f"gathered {name} into {store.tables_dir(root)} ({len(problems)} problem(s))")
        return root, name
    root = Path(results) if results else default_root()
    gathered = store.sweeps(root)
    latest = sorted(s for s in gathered if s.startswith(f"{sweep}-"))
    if sweep not in gathered and latest:
        # sweep.run names sweeps SPACE-YYYYmmdd-HHMMSS: the space's name picks its newest.
        print(f"sweep {sweep!r}: using the newest gathered run {latest[-1]!r}")
        return root, latest[-1]
    if sweep not in gathered:
        raise ValueError(f"sweep {sweep!r} is not gathered in {root} (gathered: {gathered}); "
                         "pass the sweep folder or --results")
    return root, sweep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write a sweep's report (report.md + plots, and report.html with --html); with several "
                    "sweeps, compare their arms keyed by configuration (comparison.md).")
    ap.add_argument("sweep", nargs="+", help="a gathered sweep's name (or its space's name: the newest run of it), "
                    "or a sweep folder (STORAGE/NAME); several: a comparison across them")
    ap.add_argument("--results", default=None, help="results root (default: the folder's, else $NEUROREG_RESULTS or ./results)")
    ap.add_argument("--out", default=None, help="output folder (default: ROOT/reports/SWEEP, or ROOT/reports/compare-A+B)")
    ap.add_argument("--metric", default=None, help="metric of the best configuration (default: the sweep's)")
    ap.add_argument("--mode", default=None, choices=("max", "min"))
    ap.add_argument("--pareto", default=None, help="objectives, e.g. clean_acc:max,median_l2:max")
    ap.add_argument("--html", action="store_true", help="also write one self-contained report.html (opens offline)")
    ap.add_argument("--regather", action="store_true", help="gather the sweep folder again first")
    args = ap.parse_args(argv)
    try:
        objectives = _objectives(args.pareto)
        resolved = [_resolve(s, args.results, args.regather) for s in args.sweep]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    roots = {r.resolve() for r, _ in resolved}
    if len(roots) > 1:
        print(f"error: the sweeps are gathered in different results roots ({sorted(map(str, roots))}); "
              "gather them into one with --results", file=sys.stderr)
        return 2
    root, names = resolved[0][0], list(dict.fromkeys(n for _, n in resolved))
    from analysis import html_report

    if len(names) > 1:
        out = Path(args.out) if args.out else root / "reports" / ("compare-" + "+".join(names))
        path, frames = build_comparison(names, root, out, args.metric or "best_val_acc")
        print(f"report: {path}")
        if args.html:
            page = html_report.build_html(frames, root, out / "report.html", "Comparison: " + ", ".join(names),
                                          args.metric or "best_val_acc", args.mode or "max", objectives=objectives)
            print(f"html: {page}")
        return 0
    name = names[0]
    out = Path(args.out) if args.out else root / "reports" / name
    print(console_tables(root, name))
    path = build_report(name, root, out, args.metric, args.mode, objectives)
    print(f"\nreport: {path}")
    if args.html:
        frames = load_frames([name], root)
        metric, mode = metric_mode(frames.spec, args.metric, args.mode)
        page = html_report.build_html(
            frames, root, out / "report.html", f"Sweep {name}", metric, mode,
            searched_params(frames.spec, frames.trials, frames.configs), objectives or _spec_objectives(frames.spec))
        print(f"html: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
