"""The resolved space and trial list, as ``sweep.run --dry-run`` prints them."""

from __future__ import annotations


def describe(spec) -> str:
    """The resolved space, as --dry-run prints it."""
    from sweep.spec import enumerate_trials

    lines = [f"sweep {spec.name}: {spec.description}".rstrip(": "), f"  source: {spec.source}"]
    b = spec.base_config
    searched = {p.key for p in spec.space}

    def show(key: str, value) -> str:
        return "searched" if key in searched else str(value)

    lines.append(
        f"  base: {b.data.name} / {b.model.name} width {show('model.width', b.model.width)} / "
        f"target {show('regularizer.target', b.regularizer.target)} "
        f"alpha {show('regularizer.alpha', b.regularizer.alpha)} th {show('regularizer.th', b.regularizer.th)} / "
        f"{show('train.epochs', b.train.epochs)} epochs / "
        f"evaluation {b.evaluation.suites} on {b.evaluation.n_images} images"
    )
    lines.append("  space:")
    for p in spec.space:
        lines.append(f"    {p.key}: {p.describe()}")
    if not spec.space:
        lines.append("    (none: the base configuration only)")
    s = spec.search
    objective = (
        ", ".join(f"{m} ({o})" for m, o in zip(spec.search_metrics, spec.search_modes))
        if s.metrics else f"{spec.metric} ({spec.mode})"
    )
    lines.append(f"  search: {s.algorithm} (seed {s.seed}); objective: {objective}")
    sch = spec.scheduler
    lines.append(
        "  scheduler: " + (f"asha (grace {sch.grace_period} epochs, reduction {sch.reduction_factor:g}, "
                           f"on {spec.metric})" if sch.type == "asha" else "none")
    )
    if spec.sequential is not None:
        q = spec.sequential
        lines.append(f"  seeds: sequential, {q.min} to {q.max} per arm (first round {spec.seeds}; more until each "
                     "declared hypothesis is decided)")
    else:
        lines.append(f"  seeds: {spec.seeds if spec.seeds else [b.train.seed]}")
    for h in spec.hypotheses:
        lines.append(f"  hypothesis: {h.describe()}, alpha {spec.alpha:g}, Holm")
    r = spec.resources
    lines.append(f"  resources: {r.cpus_per_trial:g} CPU + {r.gpus_per_trial:g} GPU per trial, "
                 f"max concurrent {r.max_concurrent or 'as many as fit'}; time budget {spec.time_budget_s or 'none'}")
    n = spec.num_trials()
    if spec.search.algorithm == "optuna":
        extra = f" + {spec.baseline_trials()} baseline (regularizer.target none)" if spec.baseline_trials() else ""
        lines.append(f"  trials: {n} ({spec.num_samples} configurations x {spec.repeats} seeds{extra})")
    else:
        trials = enumerate_trials(spec)
        if spec.sequential is not None:
            from sweep.tuner import trial_count

            lines.append(f"  trials: {trial_count(spec)} (the first round:)")
        else:
            lines.append(f"  trials: {n}")
        for i, t in enumerate(trials):
            lines.append(f"    {i:3d}  " + "  ".join(f"{k}={_short_value(v)}" for k, v in t.items()))
    return "\n".join(lines)


def _short_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "+".join(map(str, v))
    return str(v)
