"""The data of a report, loaded once, and its formatting: shared by the Markdown report
(analysis.report) and the HTML page (analysis.html_report)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.confirmatory import Family, decision_line
from analysis.gather import (
    NOT_IDENTITY,
    arm_labels,
    is_seed_column,
)
from analysis.query import config_columns, load, sweep_meta
from analysis.stats import (
    CONFIRMATORY_CORRECTION,
    CORRECTION,
    MIN_CI_SEEDS,
    finished,
    varying_columns,
)

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


def finished_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "TERMINATED"] if "status" in df.columns and len(df) else df


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
    noise = finished_rows(load("noise", root, sweeps))
    adv = finished_rows(load("adversarial", root, sweeps))
    adv_sum = finished_rows(load("adversarial_summary", root, sweeps))
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
        # The record tables too: a configuration and seed trained twice is one observation in
        # every table, plot and SEM, not two seeds.
        noise = merge_record_repeats(noise, trials, ["noise", "level"])
        adv_sum = merge_record_repeats(adv_sum, trials, ["norm"])
        adv = merge_record_repeats(adv, trials, None)
    spec = sweep_meta(root, sweeps[0]).get("sweep_spec") or {} if len(sweeps) == 1 else {}
    return Frames(sweeps, trials, done, noise, adv, adv_sum, configs, repeats, spec)


def by_configuration(trials: pd.DataFrame, configs: Sequence[str]) -> pd.DataFrame:
    """Trials of several sweeps with ``arm`` relabelled from the configuration fields that vary
    across all of them (as gather labels one sweep) and ``condition`` set to condition_key.

    The label is drawn from the fields arm_key hashes (no seeds, evaluation or run-time
    fields), so one label is one arm_key; a sweep's own labels name only what varies in it.
    """
    ident = [c for c in configs if c in trials.columns and not is_seed_column(c)
             and c not in NOT_IDENTITY and not c.startswith("evaluation.")]
    labels = arm_labels(trials, ident)
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


def merge_record_repeats(records: pd.DataFrame, trials: pd.DataFrame, by: Sequence[str] | None,
                         seed_col: str = "train.seed") -> pd.DataFrame:
    """Record rows keyed by (arm_key, seed) instead of by trial: ``trial_id`` becomes the unit
    'arm_key/seed'. With ``by`` (the record's own keys, e.g. noise and level) the repeats'
    numeric values are averaged per unit; without (per-image records) their rows are pooled
    under the unit, so a per-unit fraction (robust accuracy) is the repeats' mean."""
    if not len(records) or seed_col not in trials.columns or "arm_key" not in trials.columns:
        return records
    t = trials.set_index(["sweep", "trial_id"])
    unit = t["arm_key"].astype(str) + "/seed " + t[seed_col].astype(str)
    idx = pd.MultiIndex.from_frame(records[["sweep", "trial_id"]])
    out = records.assign(trial_id=unit.reindex(idx).to_numpy())
    if by is None:
        return out
    keys = ["arm", "trial_id", *by]
    numeric = [c for c in out.columns if c not in keys and pd.api.types.is_numeric_dtype(out[c])
               and not pd.api.types.is_bool_dtype(out[c])]
    g = out.groupby(keys, sort=False, dropna=False)
    merged = g.first().drop(columns=numeric).join(g[numeric].mean()).reset_index()
    return merged[list(out.columns)]


def searched_params(spec: dict[str, Any], trials: pd.DataFrame, configs: Sequence[str]) -> list[str]:
    """The sweep's search-space keys (sweep.yaml), else the config columns that vary."""
    space = spec.get("space")
    if isinstance(space, dict) and space:
        return [k for k in space if k in trials.columns]
    return [c for c in varying_columns(trials, configs) if not is_seed_column(c)]


def relative_path(path: Any, root: str | os.PathLike) -> str:
    """``path`` relative to the results root, so that a report holds no machine paths."""
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return "–"
    p, r = Path(str(path)), Path(root).resolve()
    try:
        return p.resolve().relative_to(r).as_posix() or "."
    except ValueError:
        return p.name  # outside the results folder: its name only


CI_LABEL = "95 % CI (uncorrected)"
"""The intervals are per comparison, not corrected for the family (the p-values are)."""


def ci_text(lo: float, hi: float, n: Any, digits: int = 3) -> str:
    """'[lo, hi]', or 'n = 2: no interval' below MIN_CI_SEEDS seeds."""
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        n = 0 if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)
        return f"n = {n}: no interval" if n < MIN_CI_SEEDS else "–"
    return f"[{fmt(lo, digits)}, {fmt(hi, digits)}]"


def family_table(rows: pd.DataFrame, confirmatory: bool = False) -> pd.DataFrame:
    """The rows of one family for a Markdown or HTML table."""
    t = rows[["metric", "arm", "test", "n", "mean", "baseline_mean", "diff"]].copy()
    if confirmatory:  # an arm-vs-arm hypothesis names its reference; the rest read "none"
        t.insert(2, "reference", rows["baseline_arm"])
        t = t.rename(columns={"baseline_mean": "reference mean"})
    label = "CI (uncorrected)" if confirmatory else CI_LABEL
    t[label] = [ci_text(lo, hi, n) for lo, hi, n in zip(rows["ci_low"], rows["ci_high"], rows["n"])]
    if confirmatory:
        t["CI level %"] = 100 * rows["ci_level"]
    t["p"] = rows["p"]
    t[f"p ({CONFIRMATORY_CORRECTION if confirmatory else 'BH'})"] = rows["p_adj"]
    t["MDE (80 %)"] = rows["mde"]
    if confirmatory:
        t["direction"] = rows["direction"]
        t["smallest effect"] = rows["smallest_effect"]
        t["seeds for smallest effect"] = rows["seeds_needed"]
        t["decision"] = rows["decision"]
    return t


def decision_lines(family: Family) -> list[str]:
    """One line per declared hypothesis and arm, in the order declared."""
    return [decision_line(r, family.alpha) for r in family.confirmatory.itertuples()]


def family_text(family: Family) -> str:
    """How the comparisons were tested, the family sizes, and the significant exploratory rows."""
    conf, expl = family.confirmatory, family.exploratory
    design = (f"sequential: looks after every round from {family.sequential['min']} to {family.sequential['max']} "
              "seeds, Lan-DeMets O'Brien-Fleming alpha spending, alpha split over the hypotheses "
              "(analysis.sequential, docs/METHOD.md)" if family.sequential else "fixed number of seeds")
    lines = [
        f"Family of {family.size} comparisons: {len(conf)} confirmatory (declared hypotheses x arms, "
        f"one-sided in the declared direction, p {CONFIRMATORY_CORRECTION}-corrected, alpha {family.alpha:g}, "
        f"{design}) and {len(expl)} exploratory (every other arm x metric, two-sided, p {CORRECTION}-corrected "
        "over these rows).",
        "",
        "Difference = arm − baseline of the same condition, per metric (no metric is pooled across noise types "
        "or levels). Paired t-test over the seeds both arms share, Welch's t-test where seeds do not match. "
        f"The {CI_LABEL} is per comparison, not corrected for the family; a one-sided confirmatory row "
        f"shows the {100 * (1 - 2 * family.alpha):g} % interval of its one-sided test instead (lower bound above 0: "
        "significant before Holm; upper bound below the smallest effect: futility). Below "
        f"{MIN_CI_SEEDS} seeds no interval is given (with 1 df it spans ±12.7 sd) and no decision taken. *MDE (80 %)*: the smallest difference these "
        "seeds detect with 80 % power at the observed sd (metric units); *seeds for smallest effect*: "
        "seeds per arm for 80 % power at the declared smallest effect.",
        "",
    ]
    if (conf.get("direction", pd.Series(dtype=str)) == "equivalent").any():
        lines[-1:-1] = ["An *equivalent* row tests |arm − reference| < smallest effect by two one-sided tests "
                        "(TOST, paired by seed): p is the larger one-sided p, and equivalence holds when the "
                        f"{100 * (1 - 2 * family.alpha):g} % interval lies inside ± the margin; *seeds for smallest "
                        "effect* there means seeds for 80 % power to show the margin at a true difference of 0.", ""]
    sig = expl[expl["p_adj"] < family.alpha]
    if len(sig):
        lines.append(f"**Exploratory, significant after correction ({len(sig)} of {len(expl)}):** " + "; ".join(
            f"{r.metric} {r.arm}: {r.diff:+.4g} {ci_text(r.ci_low, r.ci_high, r.n)}, p_BH = {r.p_adj:.2g}"
            for r in sig.itertuples()) + ".")
    else:
        lines.append(f"**No exploratory difference is significant after correction** (0 of {len(expl)}).")
    return "\n".join(lines)


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


def spec_objectives(spec: dict[str, Any]) -> dict[str, str] | None:
    search = spec.get("search") or {}
    ms, mo = search.get("metrics"), search.get("modes")
    if isinstance(ms, list) and isinstance(mo, list) and len(ms) == len(mo) and len(ms) >= 2:
        return dict(zip(ms, mo))
    return None
