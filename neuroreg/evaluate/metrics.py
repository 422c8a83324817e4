"""The summary metric names a run reports, derived from its configuration.

``sweep.run`` checks a space's ``metric`` and objectives against this list before Ray
starts. tests/test_metric_names.py runs a real evaluation and compares its summary with
this list, so the two cannot drift apart.
"""

from __future__ import annotations

from neuroreg.config import RunConfig
from neuroreg.evaluate.corruptions import CORRUPTIONS, FREQUENCY

EPOCH_METRICS = (
    "epoch", "lr", "train_loss", "sim_loss", "val_sim_loss", "train_acc", "val_acc", "best_val_acc",
    "images_per_s", "pairs_per_s", "epoch_s",
)
"""What the trainer reports every epoch (plus layer_weight_<layer> when regularized)."""

TRIAL_METRICS = ("best_val_acc", "train_wall_s", "evaluated_epoch", "dominant_weight", "n_test")
"""What a sweep trial adds in its final report (dominant_weight only when regularized)."""


def _g(v: float) -> str:
    return f"{v:g}"


def evaluation_metrics(cfg: RunConfig) -> set[str] | None:
    """Numeric summary metrics of ``evaluate_model`` for ``cfg``; None when a configured suite's
    names are only known at run time (frequency)."""
    ev = cfg.evaluation
    out: set[str] = set()
    if "frequency" in ev.suites:
        return None
    for suite in ev.suites:
        out.add(f"seconds_{suite}")
    if "clean" in ev.suites:
        out.add("clean_acc")
    if "noise" in ev.suites:
        for kind, levels in ev.levels_for(cfg.data.name).items():
            out.update(f"noise_acc_{kind}_{_g(lv)}" for lv in levels)
        out.add("noise_acc_mean")
    if "adversarial" in ev.suites:
        for norm in ev.norms:
            out.update(f"{k}_{norm}" for k in ("median", "q25", "q75", "adv_success", "adv_unbroken", "adv_seconds"))
        out.update({"adv_n_invariant_violations", "adv_n_invariant_violations_final"})
    if "transfer" in ev.suites:
        out.update(f"transfer_acc_{_g(e)}" for e in ev.transfer_epsilons)
    if "boundary" in ev.suites:
        out.update(f"boundary_success_{_g(b)}" for b in ev.boundary_budgets)
    if "corruptions" in ev.suites:
        names = list(ev.corruptions) if ev.corruptions else list(CORRUPTIONS)
        out.update(f"corruption_acc_{n}_{s}" for n in names for s in ev.severities)
        out.update(f"corruption_acc_{n}" for n in names)
        out.update(f"corruption_acc_{FREQUENCY[n]}" for n in names)
        out.add("corruption_acc_mean")
    return out


def reported_metrics(cfg: RunConfig) -> set[str] | None:
    """Every numeric metric a sweep trial of ``cfg`` reports; None when not known beforehand."""
    ev = evaluation_metrics(cfg)
    if ev is None:
        return None
    out = set(EPOCH_METRICS) | set(TRIAL_METRICS) | ev
    out.update(f"layer_weight_{n}" for n in cfg.regularizer.layers)
    out.update(f"last_layer_weight_{n}" for n in cfg.regularizer.layers)
    return out
