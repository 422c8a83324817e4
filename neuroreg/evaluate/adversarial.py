"""The adversarial suite: minimal L2 / Linf perturbations per image (neuroreg.evaluate.attacks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from neuroreg.evaluate.attacks import (
    build_attacks,
    minimal_perturbations,
    per_image_records,
    summarize,
)
from neuroreg.evaluate.suite import SuiteContext, SuiteOutput, register_suite

if TYPE_CHECKING:
    from neuroreg.config import RunConfig

_PER_NORM = ("median", "q25", "q75", "adv_success", "adv_unbroken", "adv_seconds")
_SUMMARY_KEYS = {"median": "median", "q25": "q25", "q75": "q75", "adv_success": "success_rate",
                 "adv_unbroken": "n_unbroken", "adv_seconds": "seconds"}


def _metrics(cfg: RunConfig) -> set[str]:
    out = {f"{k}_{norm}" for norm in cfg.evaluation.norms for k in _PER_NORM}
    return out | {"adv_n_invariant_violations", "adv_n_invariant_violations_final"}


@register_suite("adversarial", metrics=_metrics, records=("adversarial", "adversarial_summary"),
                headline=("median_l2", "median_linf", "adv_success_l2", "adv_success_linf"))
def run_suite(ctx: SuiteContext) -> SuiteOutput:
    """Smallest verified adversarial perturbation per image and norm, over an attack ensemble."""
    ev = ctx.ev
    attacks = {norm: build_attacks(norm, getattr(ev, f"attacks_{norm}"), ev) for norm in ev.norms}
    results, checks = minimal_perturbations(ctx.model, ctx.x_adv, ctx.y_adv, attacks, ev.attack_batch_size,
                                            ev.cross_norm, ev.seed, ev.progress)
    ctx.shared["adversarial"] = results
    per_image, per_norm, summary = [], [], {}
    for norm, res in results.items():
        per_image += per_image_records(res, ctx.adv_idx, ctx.y_all[ctx.adv_idx])
        s = summarize(res)
        s.update(checks)
        per_norm.append(s)
        summary.update({f"{k}_{norm}": s[src] for k, src in _SUMMARY_KEYS.items()})
    summary.update({f"adv_{k}": v for k, v in checks.items()})
    return SuiteOutput({"adversarial_summary": per_norm, "adversarial": per_image}, summary)
