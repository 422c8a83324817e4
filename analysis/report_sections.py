"""The markdown report's sections (analysis.report): the document with its plots, the arms
table, the decisions on the declared hypotheses, both comparison families, layer-weight
collapse and the frequency analysis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from analysis.confirmatory import Family, comparison_family
from analysis.frames import decision_lines, family_table, family_text, md_table, pm
from analysis.stats import KEY_METRICS, arm_summary


class Doc:
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


def arms_table(doc: Doc, done: pd.DataFrame, metric: str) -> None:
    """The arms' mean ± SEM table."""
    metrics = [m for m in dict.fromkeys([metric, *KEY_METRICS, "median_l2_correct", "median_linf_correct"])
               if m in done.columns]
    if metrics and len(done):
        s = arm_summary(done, metrics)
        table = pd.DataFrame({"arm": s["arm"], "n": s["n"]})
        for m in metrics:
            table[m] = [pm(a, b) for a, b in zip(s[f"{m}_mean"], s[f"{m}_sem"])]
        doc.add("## Arms (mean ± SEM over seeds)", "", md_table(table))


def decisions(doc: Doc, fam: Family) -> None:
    """The declared hypotheses' decisions, one line each: the first thing a report says."""
    if len(fam.confirmatory):
        doc.add("## Decisions on the declared hypotheses (confirmatory)", "",
                *[f"- {line}" for line in decision_lines(fam)], "")


def family_section(doc: Doc, fam: Family, no_baseline: str) -> None:
    """Both families' tables: confirmatory (declared) first, then exploratory."""
    doc.add("## Against the baseline", "")
    if not fam.size:
        doc.add(no_baseline, "")
        return
    doc.add(family_text(fam), "")
    if len(fam.confirmatory):
        doc.add(f"### Confirmatory ({len(fam.confirmatory)} comparisons, Holm)", "",
                md_table(family_table(fam.confirmatory, confirmatory=True)))
    doc.add(f"### Exploratory ({len(fam.exploratory)} comparisons, Benjamini-Hochberg)", "",
            md_table(family_table(fam.exploratory)))


def collapse_section(doc: Doc, done: pd.DataFrame, spec: dict) -> None:
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
        fam = comparison_family(keep, spec)
        rows = fam.rows()
        if not len(rows) or rows["n"].max() < 2:
            doc.add(f"Without the collapsed runs: {int((~col).sum())} regularized run(s) left, "
                    "too few to compare.", "")
        else:
            doc.add("Without the collapsed runs (their seeds drop out of the pairing; a sensitivity "
                    "analysis, not a family of its own):", "", *[f"- {ln}" for ln in decision_lines(fam)], "",
                    md_table(family_table(fam.exploratory)))


def frequency_section(doc: Doc, freq: pd.DataFrame, adv_sum: pd.DataFrame, corr: pd.DataFrame) -> None:
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


def cost_section(doc: Doc, done: pd.DataFrame, epochs: pd.DataFrame | None = None) -> None:
    """What each arm cost: a trial's wall time, split into training and the rest (evaluation and
    set-up), and the training time against the baseline of the same condition (the price of a
    regularizer or a pairing)."""
    if "wall_time_s" not in done.columns or not len(done):
        return
    wall = pd.to_numeric(done["wall_time_s"], errors="coerce")
    if epochs is not None and len(epochs) and "epoch_s" in epochs.columns:
        # The epochs' own times: a resumed trial's train_wall_s restarts at the resume, while
        # Ray's time_total_s carries on; the epochs table keeps each epoch once.
        per_trial = epochs.assign(_s=pd.to_numeric(epochs["epoch_s"], errors="coerce")).groupby(
            ["sweep", "trial_id"])["_s"].sum(min_count=1).rename("_train").reset_index()
        train = done[["sweep", "trial_id"]].merge(per_trial, how="left")["_train"].set_axis(done.index)
    elif "train_wall_s" in done.columns:
        train = pd.to_numeric(done["train_wall_s"], errors="coerce")
    else:
        return
    d = done.assign(_wall=wall, _train=train, _rest=wall - train)
    g = d.groupby("arm", sort=False)
    t = pd.DataFrame({
        "n": g.size(),
        "trial wall, min (range)": g["_wall"].agg(lambda s: f"{s.mean() / 60:.1f} ({s.min() / 60:.1f}-{s.max() / 60:.1f})"),
        "training, min": g["_train"].mean() / 60,
        "evaluation + set-up, min": g["_rest"].mean() / 60,
        "total, h": g["_wall"].sum() / 3600,
    })
    if "baseline" in d.columns and "condition" in d.columns:
        is_base = d["baseline"].fillna(False).astype(bool)
        base = d[is_base].groupby("condition")["_train"].mean()
        if len(base):
            cond = g["condition"].first()
            t["training vs its baseline"] = g["_train"].mean() / cond.map(base)
    doc.add("## Cost per arm (wall time)", "",
            "A trial's wall time (Ray's `time_total_s`), its training (the sum of its epochs' "
            "`epoch_s`) and the rest (evaluation, data and model set-up); means over the arm's "
            "trials. Measured as the sweep ran: concurrent trials and other load on the machine "
            "are in these numbers.", "",
            md_table(t.reset_index()))
