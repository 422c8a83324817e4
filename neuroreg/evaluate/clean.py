"""The clean suite: accuracy on the unperturbed test set."""

from __future__ import annotations

from neuroreg.evaluate.common import accuracy
from neuroreg.evaluate.suite import SuiteContext, SuiteOutput, register_suite


@register_suite("clean", metrics=lambda cfg: {"clean_acc"}, headline=("clean_acc",))
def run_suite(ctx: SuiteContext) -> SuiteOutput:
    """Accuracy on the whole test set."""
    acc = accuracy(ctx.model, ctx.x_all, ctx.y_all, ctx.ev.batch_size, ctx.device)
    return SuiteOutput({"clean": [{"suite": "clean", "accuracy": acc, "n": len(ctx.test)}]}, {"clean_acc": acc})
