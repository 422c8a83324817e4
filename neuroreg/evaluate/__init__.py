"""Robustness evaluation: clean, noise, minimal adversarial distances, transfer, boundary,
corruptions, frequency. ``evaluate_model`` runs the suites of a config and writes records."""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_model"]


def __getattr__(name: str) -> Any:
    # Lazy: neuroreg.config imports neuroreg.evaluate.config, and the runner imports neuroreg.config.
    if name == "evaluate_model":
        from neuroreg.evaluate.runner import evaluate_model

        return evaluate_model
    raise AttributeError(name)
