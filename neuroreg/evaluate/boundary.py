"""Targeted decision-based boundary attack: success rate vs Linf budget (Li et al. 2023, Fig. 2b).

Foolbox's ``BoundaryAttack`` (Brendel et al. 2018) uses only the model's decisions. It
starts from an image of the target class and walks towards the clean image while
staying in the target class; it minimises L2, and the Linf size of its final point is
compared with each budget (the success rate at budget b is the fraction of images whose
targeted adversarial lies within Linf <= b). Expensive: run it on a small N.

``attack="hsj_linf"`` uses HopSkipJump (Chen et al. 2020, the boundary attack's
query-efficient successor) with its Linf constraint instead: it minimises Linf directly
and gets much closer to the boundary for the same number of model calls.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from neuroreg.evaluate.attacks import perturbation_norms
from neuroreg.evaluate.common import predict, progress, subset_index
from neuroreg.evaluate.suite import SuiteContext, SuiteOutput, fmt_level, register_suite

if TYPE_CHECKING:
    from neuroreg.config import RunConfig

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def choose_targets(y: Tensor, num_classes: int, seed: int) -> Tensor:
    """A random target class other than the label for every image (fixed by seed)."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, (len(y),), generator=g)
    return (y.cpu() + shift) % num_classes


def boundary_success(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    pool_x: Tensor,
    budgets: Sequence[float],
    num_classes: int,
    steps: int = 2000,
    seed: int = 0,
    batch_size: int = 50,
    show_progress: bool = True,
    attack: str = "boundary",
) -> tuple[list[dict], Tensor]:
    """Records ``{budget, success_rate, n}`` and the per-image Linf distances (inf = failed).

    ``pool_x``: images to draw starting points from (one the model assigns to the target
    class). Images the model misclassifies, or whose target class it never predicts on the
    pool, count as failures (they stay in ``n``).
    """
    import foolbox as fb

    if attack not in ("boundary", "hsj_linf"):
        raise ValueError(f"unknown decision-based attack {attack!r}; use 'boundary' or 'hsj_linf'")
    model.eval()
    device = x.device
    targets = choose_targets(y, num_classes, seed)
    pool_pred = predict(model, pool_x, 256, device)
    clean_ok = predict(model, x, 256, device) == y.cpu()
    g = torch.Generator().manual_seed(seed + 1)
    start_idx = torch.full((len(x),), -1, dtype=torch.int64)
    for i, t in enumerate(targets.tolist()):
        cands = (pool_pred == t).nonzero().flatten()
        if len(cands) and clean_ok[i]:
            start_idx[i] = cands[torch.randint(len(cands), (1,), generator=g)].item()
    dist = torch.full((len(x),), math.inf, dtype=torch.float64)
    run = (start_idx >= 0).nonzero().flatten()
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for b in progress(range(0, len(run), batch_size), "boundary", enabled=show_progress):
            idx = run[b : b + batch_size]
            xb, tb = x[idx], targets[idx].to(device)
            starts = pool_x[start_idx[idx]].to(device)
            if attack == "boundary":
                fb_attack = fb.attacks.BoundaryAttack(steps=steps)
            else:
                fb_attack = fb.attacks.HopSkipJumpAttack(steps=steps, constraint="linf")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                adv = fb_attack.run(fmodel, xb, fb.criteria.TargetedMisclassification(tb), starting_points=starts)
            adv = adv.clamp(0, 1)
            ok = predict(model, adv, 256, device) == tb.cpu()  # verified: the target class, run again
            d = perturbation_norms(adv - xb, "linf").cpu()
            d[~ok] = math.inf
            dist[idx] = d
    n = len(x)
    records = [
        {"budget": float(e), "success_rate": float((dist <= e).sum()) / max(n, 1), "n": n} for e in budgets
    ]
    return records, dist


def _metrics(cfg: RunConfig) -> set[str]:
    return {f"boundary_success_{fmt_level(b)}" for b in cfg.evaluation.boundary_budgets}


@register_suite("boundary", metrics=_metrics)
def run_suite(ctx: SuiteContext) -> SuiteOutput:
    """Success rate of a decision-based attack at fixed Linf budgets."""
    ev = ctx.ev
    idx = subset_index(len(ctx.test), ev.boundary_n_images, ev.seed)
    recs, _ = boundary_success(ctx.model, ctx.x_all[idx].to(ctx.device), ctx.y_all[idx], ctx.x_adv,
                               ev.boundary_budgets, len(ctx.test.classes), ev.boundary_steps, ev.seed,
                               ev.attack_batch_size, ev.progress, ev.boundary_attack)
    return SuiteOutput({"boundary": recs},
                       {f"boundary_success_{fmt_level(r['budget'])}": r["success_rate"] for r in recs})
