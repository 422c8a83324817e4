"""Transferred FGSM (Attias et al.): perturbations from a surrogate, accuracy of the target."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from neuroreg.evaluate.common import progress
from neuroreg.evaluate.suite import SuiteContext, SuiteOutput, fmt_level, register_suite

if TYPE_CHECKING:
    from neuroreg.config import RunConfig

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def fgsm_transfer(
    target: nn.Module,
    surrogate: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    batch_size: int = 256,
    surrogate_name: str = "surrogate",
    show_progress: bool = True,
) -> list[dict]:
    """Records ``{epsilon, accuracy, surrogate_accuracy, surrogate, n}``, one per epsilon.

    FGSM (Foolbox ``FGSM``, Linf, untargeted, clipped to [0, 1]) runs on the surrogate
    with the true labels; the target model classifies the resulting images.
    """
    import foolbox as fb

    target.eval()
    surrogate.eval()
    eps = [float(e) for e in epsilons]
    device = next(iter(surrogate.parameters()), torch.empty(0)).device
    correct_t = torch.zeros(len(eps))
    correct_s = torch.zeros(len(eps))
    fmodel = fb.PyTorchModel(surrogate, bounds=(0.0, 1.0), device=device)
    attack = fb.attacks.FGSM()
    for b in progress(range(0, len(x), batch_size), "transfer", enabled=show_progress):
        xb, yb = x[b : b + batch_size].to(device), y[b : b + batch_size].to(device)
        _, clipped, _ = attack(fmodel, xb, fb.criteria.Misclassification(yb), epsilons=eps)
        with torch.no_grad():
            for k, adv in enumerate(clipped):
                correct_t[k] += (target(adv).argmax(1) == yb).sum().cpu()
                correct_s[k] += (surrogate(adv).argmax(1) == yb).sum().cpu()
    n = max(len(x), 1)
    return [
        {
            "epsilon": e,
            "accuracy": float(correct_t[k]) / n,
            "surrogate_accuracy": float(correct_s[k]) / n,
            "surrogate": surrogate_name,
            "n": len(x),
        }
        for k, e in enumerate(eps)
    ]


def _metrics(cfg: RunConfig) -> set[str]:
    return {f"transfer_acc_{fmt_level(e)}" for e in cfg.evaluation.transfer_epsilons}


@register_suite("transfer", metrics=_metrics, needs_surrogate=True)
def run_suite(ctx: SuiteContext) -> SuiteOutput:
    """Accuracy under FGSM perturbations computed on a surrogate model."""
    ev = ctx.ev
    surrogate = ctx.surrogate.to(ctx.device).eval()
    recs = fgsm_transfer(ctx.model, surrogate, ctx.x_adv, ctx.y_adv, ev.transfer_epsilons, ev.batch_size,
                         ev.surrogate or "surrogate", ev.progress)
    return SuiteOutput({"transfer": recs}, {f"transfer_acc_{fmt_level(r['epsilon'])}": r["accuracy"] for r in recs})
