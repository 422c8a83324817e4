"""The summary metric names a run reports, derived from its configuration.

``sweep.run`` checks a space's ``metric`` and objectives against this list before Ray
starts. tests/test_metric_names.py runs a real evaluation and compares its summary with
this list, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neuroreg.evaluate.suites import SUITES

if TYPE_CHECKING:
    from neuroreg.config import RunConfig

EPOCH_METRICS = (
    "epoch", "lr", "train_loss", "sim_loss", "val_sim_loss", "train_acc", "val_acc", "best_val_acc",
    "images_per_s", "pairs_per_s", "pairs_per_step", "epoch_s",
)
"""What the trainer reports every epoch (plus layer_weight_<layer> when regularized, and the
string ``pairing``: pairs, batch, shared, or none for a baseline)."""

TRIAL_METRICS = ("best_val_acc", "train_wall_s", "evaluated_epoch", "dominant_weight", "n_test")
"""What a sweep trial adds in its final report (dominant_weight only when regularized)."""


def evaluation_metrics(cfg: RunConfig) -> set[str] | None:
    """Numeric summary metrics of ``evaluate_model`` for ``cfg``, from the suites' own
    declarations; None when a configured suite's names are only known at run time."""
    out: set[str] = set()
    for suite in SUITES:
        if suite.name not in cfg.evaluation.suites:
            continue
        declared = suite.metrics(cfg)
        if declared is None:
            return None
        out |= declared | {f"seconds_{suite.name}"}
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
