"""Hypothesis selectors (``arm`` / ``reference``: config field -> value) and the rule that
picks an arm's reference; plain Python, so that sweep.validation checks a space's hypotheses
without importing pandas and scipy (a second of every sweep's start-up, before Ray starts).
analysis.confirmatory applies the same functions to the trials."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def value_matches(have: Any, want: Any) -> bool:
    """One config value against a selector's: None matches an unset or null field; numbers
    compare as numbers (to 1e-9 relative, so 4 selects 4.0 but 0 never selects 5e-9);
    anything else as text. sweep.validation checks selectors with this same rule."""
    missing = have is None or (isinstance(have, float) and math.isnan(have))
    if want is None or missing:
        return want is None and missing
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        try:
            return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return str(have) == str(want)


def pick_reference(arm: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> list[int]:
    """Which of the arms a ``reference`` selector picks in a condition is the reference of
    ``arm`` (config field -> value dicts): the only one, or those that agree with ``arm`` on
    every field in which the candidates differ (alpha {2, 4} x pairing {pairs, shared}: the
    shared arm at alpha 2 is compared with the pairs arm at alpha 2). A field in which the
    candidates agree (n_pairs 16 for every pairs arm) need not be the arm's own value."""
    if len(candidates) <= 1:
        return list(range(len(candidates)))
    keys = sorted(set().union(*candidates))
    varying = [k for k in keys if len({_key(c.get(k)) for c in candidates}) > 1]
    return [i for i, c in enumerate(candidates) if all(_key(c.get(k)) == _key(arm.get(k)) for k in varying)]


def _key(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return round(float(v), 12)
    return str(v)
