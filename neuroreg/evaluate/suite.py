"""The evaluation-suite extension point: what a suite declares and what it is handed.

A suite is a function ``run(ctx) -> SuiteOutput`` registered with ``@register_suite``
in its own module; ``neuroreg.evaluate.suites`` imports the modules of the built-in
ones (one line each). The runner, the config validation and the sweep's metric check
read the declarations here, so adding a suite touches no other file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from neuroreg.images import ImageData
from neuroreg.registry import Registry

if TYPE_CHECKING:
    from neuroreg.config import RunConfig
    from neuroreg.evaluate.config import EvalConfig


@dataclass
class SuiteContext:
    """Everything a suite may read. ``shared`` carries one suite's results to a later one
    (the frequency suite reads the adversarial perturbations and corruption records)."""

    model: nn.Module
    cfg: RunConfig
    test: ImageData
    x_all: Tensor
    """All test images as [0, 1] floats (CPU)."""
    y_all: Tensor
    adv_idx: Tensor
    """The deterministic subset of ``evaluation.n_images`` test images the attacks use."""
    x_adv: Tensor
    y_adv: Tensor
    device: torch.device
    surrogate: nn.Module | None = None
    test_rgb: ImageData | None = None
    load_rgb: Callable[[], tuple[ImageData | None, str]] | None = None
    """Loads the colour test set of an RGB source on demand (the corruption suite)."""
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def ev(self) -> EvalConfig:
        return self.cfg.evaluation


@dataclass
class SuiteOutput:
    records: dict[str, list[dict]]
    """File stem -> tidy records, each written to ``<stem>.jsonl`` (the suite's own last)."""
    summary: dict[str, Any]
    """Flat metrics for summary.json and the sweep's trial report."""


@dataclass(frozen=True)
class Suite:
    name: str
    run: Callable[[SuiteContext], SuiteOutput]
    metrics: Callable[[RunConfig], set[str] | None]
    """The numeric summary metrics ``run`` reports for a config; None when only known at run time."""
    records: tuple[str, ...]
    """The record files it writes, ``<stem>.jsonl``; analysis.schema makes each a table (and
    an SQL view) of the same name, in this order."""
    needs_surrogate: bool = False
    """Needs ``evaluation.surrogate`` (a second model) to run."""
    headline: tuple[str, ...] = ()
    """Its metrics a report compares against the baseline by default (analysis.stats)."""


SUITES: Registry[Suite] = Registry("suite")


def register_suite(
    name: str,
    metrics: Callable[[RunConfig], set[str] | None],
    records: tuple[str, ...] | None = None,
    needs_surrogate: bool = False,
    headline: tuple[str, ...] = (),
) -> Callable[[Callable[[SuiteContext], SuiteOutput]], Callable[[SuiteContext], SuiteOutput]]:
    """Decorator: register ``run`` as the suite ``name``."""

    def wrap(run: Callable[[SuiteContext], SuiteOutput]) -> Callable[[SuiteContext], SuiteOutput]:
        SUITES.add(name, Suite(name, run, metrics, records or (name,), needs_surrogate, headline))
        return run

    return wrap


def fmt_level(v: float) -> str:
    """A level or budget as it appears in metric names (``noise_acc_gaussian_0.1``)."""
    return f"{v:g}"
