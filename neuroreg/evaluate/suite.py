"""The evaluation-suite extension point: what a suite is handed and returns, and its registration.

A suite is one module plus one registration: ``neuroreg.evaluate.suites`` declares each
built-in suite in one line (name, module, record files, headline metrics), and the module
implements it with ``@register_suite`` on its ``run(ctx)``. The declarations are all that
the analysis reads, so it imports neither torch nor any suite's module; the runner's
``suite.run`` imports the module on first use. A suite registered with ``@register_suite``
alone, without a declaration (a plug-in, a test), is complete at once. The runner, the
config validation and the sweep's metric check read the registry, so adding a suite
touches no other file.

No torch import at run time here: the tensor types below are annotations only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from neuroreg.evaluate.suites import IMPLEMENTED, SUITES, Suite

__all__ = ["SUITES", "Suite", "SuiteContext", "SuiteOutput", "fmt_level", "register_suite"]

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from neuroreg.config import RunConfig
    from neuroreg.evaluate.config import EvalConfig
    from neuroreg.images import ImageData


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


def register_suite(
    name: str,
    metrics: Callable[[RunConfig], set[str] | None],
    records: tuple[str, ...] | None = None,
    needs_surrogate: bool | None = None,
    headline: tuple[str, ...] | None = None,
) -> Callable[[Callable[[SuiteContext], SuiteOutput]], Callable[[SuiteContext], SuiteOutput]]:
    """Decorator: register ``run`` as the suite ``name``.

    For a suite declared in ``neuroreg.evaluate.suites`` by this module, this supplies its
    implementation; the declarations given here (records, needs_surrogate, headline), if
    any, must agree with it. Any other name is registered as a new, complete suite.
    """

    def wrap(run: Callable[[SuiteContext], SuiteOutput]) -> Callable[[SuiteContext], SuiteOutput]:
        declared = next((s for s in SUITES if s.name == name), None)
        if declared is not None and declared.module == run.__module__ and name not in IMPLEMENTED:
            given = {"records": tuple(records or (name,)) if records is not None else None,
                     "needs_surrogate": needs_surrogate,
                     "headline": tuple(headline) if headline is not None else None}
            for key, value in given.items():
                if value is not None and value != getattr(declared, key):
                    raise ValueError(f"suite {name!r}: {run.__module__} registers {key}={value!r} but "
                                     f"neuroreg.evaluate.suites declares {getattr(declared, key)!r}; make them agree")
            IMPLEMENTED[name] = (run, metrics)
        else:  # a new suite, or a second registration (refused by the registry)
            SUITES.add(name, Suite(name, run, metrics, tuple(records or (name,)), bool(needs_surrogate),
                                   tuple(headline or ())))
        return run

    return wrap


def fmt_level(v: float) -> str:
    """A level or budget as it appears in metric names (``noise_acc_gaussian_0.1``)."""
    return f"{v:g}"
