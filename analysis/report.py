"""A sweep's report: ``python -m analysis.report SWEEP [--results ROOT] [--out DIR] [--html]``.

SWEEP is a sweep name gathered in ROOT, or a sweep folder (gathered first if its tables
are not there yet). Writes ``DIR/report.md`` with tables and plots (PNG + SVG + PDF under
``DIR/plots/``): trials by status and their errors, the best configuration, every
regularizer against the baseline (declared hypotheses first, paired by seed, uncorrected 95 % CI, corrected p, minimal detectable effect), noise
accuracy, median adversarial distances and robust accuracy vs epsilon, transferred FGSM,
corruptions, frequency plots, the search surface (heat map of a grid, Optuna contour and
slice plots of a continuous search), parameter importance and the Pareto front of
multi-objective sweeps. The contour plot and the fANOVA importance need
analysis.importance.MIN_CONFIGS (8) distinct configurations; below, one line says why they
are left out. Plot titles count configurations and seeds; a field that does not apply to an
arm (Th of the baseline, analysis.applicable) shows as '–'. Prints the noise-accuracy and
median-distance tables to stdout.
``--html`` also writes ``DIR/report.html`` (analysis.html_report). Several sweeps:
``DIR/comparison.md``, arms keyed by configuration (arm_key) across them, and each sweep's
own numbers side by side per arm_key.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import html_report, plots, store
from analysis.applicable import applies
from analysis.confirmatory import comparison_family
from analysis.frames import (  # noqa: F401 (re-exported: the report's data and formatting)
    Frames,
    by_configuration,
    continuous_params,
    correct_median_distances,
    decision_lines,
    distance_table,
    family_table,
    family_text,
    finished_rows,
    fmt,
    load_frames,
    md_table,
    merge_repeats,
    metric_mode,
    noise_table,
    pm,
    relative_path,
    searched_params,
    spec_objectives,
)
from analysis.gather import (
    default_results_root,
    gather_report,
)
from analysis.importance import CONTOUR_WHY, param_importances, pareto_front, too_few_configurations
from analysis.metric_names import metric_problem
from analysis.provenance_table import load_provenance, provenance_markdown, provenance_warnings
from analysis.query import config_columns, default_root, load, run_cli, sweep_meta
from analysis.report_sections import (
    Doc,
    arms_table,
    collapse_section,
    cost_section,
    decisions,
    family_section,
    frequency_section,
)
from analysis.stats import best_arm, finished
from neuroreg.atomic import atomic_write_text

# --- the tables the CLI prints --------------------------------------------------------


def console_tables(root: str | os.PathLike, sweep: str) -> str:
    """The noise-accuracy and median-distance tables of a sweep, as plain text."""
    parts = []
    noise = finished_rows(load("noise", root, [sweep]))
    t = noise_table(noise)
    parts.append("Noise accuracy (mean ± SEM over seeds)\n" + (t.to_string(index=False) if len(t) else "(no noise records)"))
    adv = finished_rows(load("adversarial_summary", root, [sweep]))
    t = distance_table(adv)
    parts.append("Median minimal adversarial distance (mean ± SEM over seeds)\n"
                 + (t.to_string(index=False) if len(t) else "(no adversarial records)"))
    return "\n\n".join(parts)


# --- the report ---------------------------------------------------------------------------


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
    doc = Doc(out_dir)

    # The finished trials with the per-trial medians over correctly classified images: the
    # data of the comparison family, as analysis.frames.load_frames (the console's) builds it.
    adv_images = finished_rows(load("adversarial", root, [sweep]))
    if len(adv_images) and len(done):
        done = done.merge(correct_median_distances(adv_images), on=["sweep", "trial_id"], how="left")
    fam = comparison_family(done, spec)

    doc.add(f"# Sweep `{sweep}`", "")
    if spec.get("description"):
        doc.add(str(spec["description"]), "")
    doc.add(f"Source: `{relative_path(meta.get('sweep_dir', '?'), root)}`; tables: "
            f"`{relative_path(store.tables_dir(root), root)}` (paths relative to the results folder).", "")
    decisions(doc, fam)
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
        # A field the arm does not use (Th of the baseline) is '–', not its unused default.
        doc.add(md_table(pd.DataFrame({"field": shown, "value": [top[c] if applies(c, top) else None
                                                                  for c in shown]})))
        doc.add(f"Best single trial: `{top['trial_id']}` ({metric} = {fmt(top[metric])}), "
                f"checkpoint `{relative_path(top['checkpoint'], root)}`.", "")

    # Per-arm summary and comparison with the baseline.
    arms_table(doc, done, metric)
    cost_section(doc, done, load("epochs", root, [sweep]))
    family_section(doc, fam, "_No unregularized baseline arm (target none or alpha 0) in this sweep._")
    if fam.size:
        collapse_section(doc, done, spec)

    # Robustness tables and plots.
    noise = finished_rows(load("noise", root, [sweep]))
    if len(noise):
        doc.add("## Random noise", "", md_table(noise_table(noise)))
        doc.plot("noise accuracy", lambda p: plots.noise_accuracy(noise, p), "noise_accuracy")
    adv_sum = finished_rows(load("adversarial_summary", root, [sweep]))
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
    transfer = finished_rows(load("transfer", root, [sweep]))
    if len(transfer):
        t = transfer.groupby(["arm", "epsilon"])["accuracy"].agg(["mean", "sem", "count"]).reset_index()
        doc.add("## Transferred FGSM", "", md_table(t))
        doc.plot("transferred FGSM", lambda p: plots.transfer_accuracy(transfer, p), "transfer")
    corr = finished_rows(load("corruptions", root, [sweep]))
    if len(corr):
        key = "frequency" if "frequency" in corr.columns else "corruption"
        per_trial = corr.groupby(["arm", "trial_id", key])["accuracy"].mean().reset_index()
        t = per_trial.groupby(["arm", key])["accuracy"].agg(["mean", "sem", "count"]).reset_index()
        doc.add("## Common corruptions", "", md_table(t))
    freq = finished_rows(load("frequency", root, [sweep]))
    if len(freq):
        frequency_section(doc, freq, adv_sum, corr)

    # Sweep structure.
    doc.add("## Sweep structure", "")
    active = done[~done["baseline"].astype(bool)] if "baseline" in done else done
    continuous = continuous_params(spec, active)
    if continuous and len(active):
        # A continuous search samples each value once: an alpha x Th grid would be mostly
        # empty cells, so Optuna's contour and slice plots show the surface instead.
        modes = {metric: mode, **(objectives or spec_objectives(spec) or {})}
        # Below MIN_CONFIGS configurations a contour interpolates structure the data do not hold:
        # one line says so instead (the slice plot shows the points themselves).
        too_few = too_few_configurations(active, continuous, CONTOUR_WHY)
        if too_few:
            doc.add(f"_Contour plot not drawn: {too_few}_", "")
        for m, d in modes.items():
            if m in active.columns and active[m].notna().any():
                if not too_few:
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
    objectives = objectives or spec_objectives(spec)
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

    doc.add("## Provenance", "", *provenance_markdown(load_provenance(root, [sweep])), "")
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
    baseline was trained, with the same statistics as within one sweep (comparison_family).
    """
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = load_frames(sweeps, root, by_config=True)
    done, doc = frames.done, Doc(out_dir)
    doc.add(f"# Comparison of {len(frames.sweeps)} sweeps, arms keyed by configuration", "")
    doc.add("Sweeps: " + ", ".join(f"`{s}` (`{relative_path(sweep_meta(root, s).get('sweep_dir', '?'), root)}`)"
                                   for s in frames.sweeps) + " (paths relative to the results folder).", "")
    doc.add("An arm is one `arm_key` (the trained configuration without its seed, the same hash in every "
            "sweep); its label names the configuration fields that vary across these sweeps. Its "
            "baseline is the unregularized arm of the same `condition_key`, from any of the sweeps.", "")
    prov = load_provenance(root, list(frames.sweeps))
    if warnings_ := provenance_warnings(prov):
        doc.add(*[f"**{w}**" for w in warnings_], "")
    t = frames.trials
    doc.add("## Arms and where they were trained", "", md_table(html_report.arms_by_sweep(t)))
    doc.add("### Side by side, per sweep (keyed by arm_key)", "",
            "Each sweep's own finished trials: seeds and mean ± SEM over them. A configuration trained in "
            "several sweeps shows each sweep's numbers; the tables below merge them.", "",
            md_table(html_report.side_by_side(t, dict.fromkeys([metric, "clean_acc", "noise_acc_mean", "median_l2"]))))
    if frames.repeats:
        doc.add(f"{frames.repeats} finished trial(s) repeat a configuration and seed of another sweep; "
                "their metrics are averaged into one seed (one observation) in every table, plot and test.", "")
    arms_table(doc, done, metric)
    cost_section(doc, done, load("epochs", root, list(frames.sweeps)))
    family_section(doc, comparison_family(done, frames.spec),
                    "_No arm has a baseline of its condition in these sweeps._")
    if len(frames.noise):
        doc.add("## Random noise", "", md_table(noise_table(frames.noise)))
        doc.plot("noise accuracy", lambda p: plots.noise_accuracy(frames.noise, p), "noise_accuracy")
    if len(frames.adv_sum):
        doc.add("## Minimal adversarial perturbations", "", md_table(distance_table(frames.adv_sum)))
        doc.plot("median adversarial distance", lambda p: plots.median_distance(frames.adv_sum, p), "median_distance")
    if len(frames.adv):
        doc.plot("robust accuracy vs epsilon", lambda p: plots.robust_accuracy_curves(frames.adv, p), "robust_accuracy")
    doc.add("## Provenance", "", *provenance_markdown(prov), "")
    return atomic_write_text(out_dir / "comparison.md", "\n".join(doc.lines) + "\n"), frames


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
    if problem := metric_problem(root, names, args.metric, objectives):
        print(f"error: {problem}", file=sys.stderr)
        return 2

    if len(names) > 1:
        out = Path(args.out) if args.out else root / "reports" / ("compare-" + "+".join(names))
        for line in provenance_warnings(load_provenance(root, names)):  # numbers may differ for these reasons
            print(line, file=sys.stderr)
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
            searched_params(frames.spec, frames.trials, frames.configs), objectives or spec_objectives(frames.spec))
        print(f"html: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
