"""What ``sweep.run`` prints at the end: each arm against the baseline, and the Pareto set.

The numbers are the report's (``analysis.report``): both build the family with
``analysis.confirmatory.comparison_family`` from the same frames (``analysis.frames.load_frames``);
the console shows the declared hypotheses' decisions and the exploratory family's headline rows.
"""

from __future__ import annotations

import math
import os
from typing import Any

from analysis.confirmatory import comparison_family
from analysis.frames import CI_LABEL, ci_text, decision_lines, load_frames
from analysis.importance import pareto_front
from analysis.stats import CONFIRMATORY_CORRECTION, CORRECTION


def objectives_of(spec: dict[str, Any]) -> dict[str, str]:
    """metric -> mode of the sweep's search (one or several objectives)."""
    search = spec.get("search") or {}
    ms, mo = search.get("metrics"), search.get("modes")
    if isinstance(ms, list) and isinstance(mo, list) and len(ms) == len(mo) and ms:
        return dict(zip(ms, mo))
    return {spec.get("metric") or "best_val_acc": spec.get("mode") or "max"}


def _num(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def sweep_summary(root: str | os.PathLike, sweep: str) -> str:
    """Console text: the declared hypotheses' decisions, the headline rows of the exploratory
    family, then the Pareto set. The family is the report's (confirmatory.comparison_family over the
    same frames), so every p_adj printed here is the report's."""
    frames = load_frames([sweep], root)
    spec, done = frames.spec, frames.done
    if not len(done):
        return "No finished trial to compare."
    objectives = objectives_of(spec)
    lines: list[str] = []
    fam = comparison_family(done, spec)
    if not fam.size:
        lines.append("No baseline arm in this sweep: nothing to compare against.")
    else:
        seeds = done.groupby("arm").size()
        lines.append(f"Against the baseline ({', '.join(sorted(set(fam.rows().baseline_arm)))}): "
                     f"Family of {fam.size} comparisons, {len(fam.confirmatory)} confirmatory "
                     f"(declared, {CONFIRMATORY_CORRECTION}), {len(fam.exploratory)} exploratory ({CORRECTION}); "
                     "the report (analysis.report) lists every row.")
        if len(fam.confirmatory):
            lines.append(f"Declared hypotheses (alpha {fam.alpha:g}):")
            lines += [f"  {line}" for line in decision_lines(fam)]
        expl = fam.exploratory
        shown = [m for m in dict.fromkeys(["clean_acc", *objectives, "median_l2", "median_linf"])
                 if m in set(expl.metric)]
        t = expl[expl.metric.isin(shown)].copy()
        t["order"] = t.metric.map(shown.index)
        t = t.sort_values(["arm", "order"], kind="stable")
        if len(t):
            lines.append(f"Exploratory: difference arm - baseline, {CI_LABEL}, p {CORRECTION}-corrected over the "
                         f"{len(expl)} exploratory comparisons, and the smallest difference these seeds detect "
                         "with 80 % power (MDE, at the observed sd)")
            w = max(len(a) for a in t.arm)
            lines.append(f"  {'arm':<{w}}  {'seeds':>5}  {'metric':<14} {'diff':>9}  {CI_LABEL:<24} {'p_BH':>7}"
                         f"  {'MDE (80 %)':>10}")
            for r in t.itertuples():
                ci = ci_text(r.ci_low, r.ci_high, r.n)
                lines.append(f"  {r.arm:<{w}}  {int(seeds.get(r.arm, 0)):>5}  {r.metric:<14} {_num(r.diff):>9}  "
                             f"{ci:<24} {_num(r.p_adj, 2):>7}  {_num(r.mde):>10}")
        sig = expl[expl.p_adj < fam.alpha].sort_values("p_adj")
        lines.append(f"  {len(sig)} of {len(expl)} exploratory comparisons significant after correction"
                     + (":" if len(sig) else "."))
        for r in sig.head(8).itertuples():
            lines.append(f"    {r.arm}  {r.metric}  {_num(r.diff)} {ci_text(r.ci_low, r.ci_high, r.n)}  "
                         f"p_BH {_num(r.p_adj, 2)}")
        if len(sig) > 8:
            lines.append(f"    ... {len(sig) - 8} more in analysis.report")
    if len(objectives) >= 2 and all(m in done.columns for m in objectives):
        means = done.groupby("arm")[list(objectives)].mean(numeric_only=True).reset_index()
        front = pareto_front(means, objectives)
        lines.append("")
        lines.append("Pareto set (arm means over seeds; " + ", ".join(f"{m} {d}" for m, d in objectives.items()) + "):")
        for _, r in front.iterrows():
            lines.append(f"  {r['arm']}  " + "  ".join(f"{m} {r[m]:.4g}" for m in objectives))
    return "\n".join(lines)


def print_summary(root: str | os.PathLike, sweep: str) -> None:
    try:
        text = sweep_summary(root, sweep)
    except (KeyError, ValueError, FileNotFoundError) as e:
        text = f"(no summary: {type(e).__name__}: {e})"
    print(text)
