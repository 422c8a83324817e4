"""What ``sweep.run`` prints at the end: each arm against the baseline, and the Pareto set.

The numbers are the report's (``analysis.report``): the family of comparisons over every
metric is tested and corrected as a whole; the console shows its headline rows only.
"""

from __future__ import annotations

import math
import os
from typing import Any

from analysis.importance import pareto_front
from analysis.query import load, sweep_meta
from analysis.stats import CORRECTION, compare_family, family_metrics, finished


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
    """Console text: arm vs baseline on the headline metrics, then the Pareto set."""
    spec = sweep_meta(root, sweep).get("sweep_spec") or {}
    done = finished(load("trials", root, [sweep]))
    if not len(done):
        return "No finished trial to compare."
    objectives = objectives_of(spec)
    lines: list[str] = []
    fam = compare_family(done, family_metrics(done, list(objectives)))
    if not len(fam):
        lines.append("No baseline arm in this sweep: nothing to compare against.")
    else:
        shown = [m for m in dict.fromkeys(["clean_acc", *objectives, "median_l2", "median_linf"]) if m in set(fam.metric)]
        t = fam[fam.metric.isin(shown)].copy()
        t["order"] = t.metric.map(shown.index)
        t = t.sort_values(["arm", "order"], kind="stable")
        seeds = done.groupby("arm").size()
        lines.append(f"Against the baseline ({', '.join(sorted(set(fam.baseline_arm)))}): difference arm - baseline, "
                     f"95 % CI, p {CORRECTION}-corrected over all {len(fam)} comparisons "
                     "(every noise level too: see analysis.report); power of the test at the observed effect "
                     "and variance, and the seeds per arm that would give 80 %")
        w = max(len(a) for a in t.arm)
        lines.append(f"  {'arm':<{w}}  {'seeds':>5}  {'metric':<14} {'diff':>9}  {'95 % CI':<21} {'p_BH':>7}"
                     f"  {'power':>5}  {'seeds for 80 %':>14}")
        for r in t.itertuples():
            ci = f"[{_num(r.ci_low)}, {_num(r.ci_high)}]"
            n80 = "–" if not r.n_80 == r.n_80 else ("> 1000" if r.n_80 == float("inf") else f"{int(r.n_80)}")
            lines.append(f"  {r.arm:<{w}}  {int(seeds.get(r.arm, 0)):>5}  {r.metric:<14} {_num(r.diff):>9}  "
                         f"{ci:<21} {_num(r.p_adj, 2):>7}  {_num(r.power, 2):>5}  {n80:>14}")
        sig = fam[fam.p_adj < 0.05].sort_values("p_adj")
        lines.append(f"  {len(sig)} of {len(fam)} comparisons significant after correction"
                     + (":" if len(sig) else "."))
        for r in sig.head(8).itertuples():
            lines.append(f"    {r.arm}  {r.metric}  {_num(r.diff)} [{_num(r.ci_low)}, {_num(r.ci_high)}]  "
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
