"""The browser report: one self-contained HTML file (``analysis.report SWEEP --html``).

Plots are plotly figures with plotly's JavaScript inlined once, so the page opens from disk
without network access; all are SVG except the parallel coordinates, which plotly draws
with WebGL. Tables are plain HTML in their own scroll box (sticky headers), sortable by a
click on a column header (numbers as numbers, missing values last), with a filter box and
pages when long (inline JavaScript, analysis.html_table). A viewport tag makes
the page readable on a phone. Sections: the declared hypotheses' decisions, trials (counts,
every trial with its configuration, seed, status, node, headline metrics and folder; across
sweeps the arm_key table and each sweep side by side), best configuration, arms, the
comparison with the baseline (analysis.confirmatory.comparison_family), noise curves, adversarial
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

import pandas as pd
from plotly.offline import get_plotlyjs

from analysis.confirmatory import comparison_family
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
from analysis.html_figures import (
    _colors,
    distance_figure,
    importance_figure,
    layer_weight_figure,
    noise_figure,
    optuna_figure,
    parcoords_figure,
    pareto_figure,
    robust_figure,
)
from analysis.html_table import _CSS, _TABLE_JS, md_inline, table_html
from analysis.importance import param_importances, pareto_front
from analysis.provenance_table import load_provenance, provenance_rows, provenance_warnings
from analysis.stats import KEY_METRICS, arm_summary, best_arm
from neuroreg.atomic import atomic_write_text

_CONFIG = {"displaylogo": False, "responsive": True}


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
