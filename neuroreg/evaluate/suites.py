"""The suite registry and the built-in suites' declarations, in the order they run.

Adding a suite is one module plus one registration: write its module with a
``@register_suite`` run function (``neuroreg.evaluate.suite``) and declare it below in
one line; a later suite may read an earlier one's results from ``ctx.shared`` (frequency
reads adversarial and corruptions).

A declaration holds what the analysis needs (record files -> tables and SQL views,
headline metrics), so reading the registry imports neither torch nor any suite's
module: ``Suite.run`` and ``Suite.metrics`` import the module on first use, and
``Suite.load`` does it ahead of time. A suite registered with ``@register_suite`` alone,
without a declaration here (a plug-in, a test), is complete at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neuroreg.registry import Registry

if TYPE_CHECKING:
    from neuroreg.config import RunConfig
    from neuroreg.evaluate.suite import SuiteContext, SuiteOutput

__all__ = ["SUITES", "Suite", "declare_suite", "suite_names"]


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
    module: str | None = None
    """The module implementing a declared suite, imported on first use of ``run`` or ``metrics``."""

    def load(self) -> Suite:
        """Import the implementation now (e.g. before a timer starts); returns self."""
        if self.module is not None:
            implementation(self.name, self.module)
        return self


SUITES: Registry[Suite] = Registry("suite")

IMPLEMENTED: dict[str, tuple[Callable[[SuiteContext], SuiteOutput], Callable[[RunConfig], set[str] | None]]] = {}
"""Declared suite name -> the (run, metrics) its module registered (``register_suite`` fills it)."""


def implementation(name: str, module: str) -> tuple[Callable, Callable]:
    """The (run, metrics) of the declared suite ``name``, importing ``module`` if need be."""
    if name not in IMPLEMENTED:
        importlib.import_module(module)
    try:
        return IMPLEMENTED[name]
    except KeyError:
        raise RuntimeError(f"suite {name!r} is declared in neuroreg.evaluate.suites as implemented by {module}, "
                           f"but {module} registers no run function: decorate it with "
                           f"@register_suite({name!r}, metrics=...)") from None


@dataclass(frozen=True)
class _Deferred:
    """``Suite.run`` or ``Suite.metrics`` of a declared suite: imports its module when called."""

    name: str
    module: str
    part: int  # 0: run, 1: metrics

    def __call__(self, arg: Any) -> Any:
        return implementation(self.name, self.module)[self.part](arg)


def declare_suite(
    name: str,
    module: str,
    records: tuple[str, ...] | None = None,
    needs_surrogate: bool = False,
    headline: tuple[str, ...] = (),
) -> Suite:
    """Register the suite ``name`` by its declarations; ``module`` implements it with
    ``@register_suite(name, metrics=...)`` and is imported only when the suite runs or its
    metric names are asked for. Registration order is the order suites run in."""
    return SUITES.add(name, Suite(name, _Deferred(name, module, 0), _Deferred(name, module, 1),
                                  tuple(records or (name,)), needs_surrogate, tuple(headline), module))


def suite_names() -> tuple[str, ...]:
    return SUITES.names()


# The order of these lines is the order suites run in.
declare_suite("clean", "neuroreg.evaluate.clean", headline=("clean_acc",))
declare_suite("noise", "neuroreg.evaluate.noise", headline=("noise_acc_mean",))
declare_suite("adversarial", "neuroreg.evaluate.adversarial", records=("adversarial", "adversarial_summary"),
              headline=("median_l2", "median_linf", "adv_success_l2", "adv_success_linf"))
declare_suite("transfer", "neuroreg.evaluate.transfer", needs_surrogate=True)
declare_suite("boundary", "neuroreg.evaluate.boundary")
declare_suite("corruptions", "neuroreg.evaluate.corruptions")
declare_suite("frequency", "neuroreg.evaluate.frequency", headline=("f_rev", "f05_l2", "f05_linf"))
