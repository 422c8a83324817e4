"""Which configuration fields a run actually used: ``applies(param, config)``.

Every trial's config holds every field with a value (the dataclass defaults fill the ones
a sweep never set), so the baseline (target none) still carries ``regularizer.th = 0.8``.
Reports, the console and the study show such a value as '–': it did not shape the run, and printing it next to a
regularized arm's th suggests a comparison that does not exist.

The rules follow neuroreg.config.RegularizerConfig and the target registry
(neuroreg.targets.TARGETS, each target declaring the ``regularizer.*`` fields it reads):

- fields outside ``regularizer.*`` always apply;
- ``regularizer.target`` always applies; ``regularizer.alpha`` applies whenever a target is
  set (alpha 0 with a target is a point on the alpha axis, not a missing value);
- every other ``regularizer.*`` field applies only to an active regularizer (target and
  alpha > 0); a field some target declares applies only to the targets that read it;
  ``n_pairs`` / ``batch_k`` only to their pairing, ``ema_beta`` to running centering and
  ``eps`` to the atanh loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

_DEPENDS = {
    "n_pairs": ("pairing", ("pairs", "shared")),
    "batch_k": ("pairing", ("batch",)),
    "ema_beta": ("centering", ("running",)),
    "eps": ("loss", ("atanh",)),
}
"""regularizer field -> (field it depends on, the values under which it is read)."""


@lru_cache(maxsize=1)
def _target_fields() -> frozenset[str]:
    # Imported here: neuroreg.targets pulls in torch, which the analysis query path does not
    # need until a report asks.
    from neuroreg.targets import TARGETS

    return frozenset(p for t in TARGETS for p in t.params)


def _target_params(target: str, shuffle_of: Any) -> tuple[str, ...]:
    from neuroreg.targets import target_params

    return target_params(target, None if _missing(shuffle_of) else str(shuffle_of))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def applies(param: str, config: Mapping[str, Any]) -> bool:
    """Whether ``param`` (a dotted config field) shaped the run whose flat config is ``config``.

    ``config`` maps dotted field names to values (a trials-table row works). Without a
    ``regularizer.target`` entry nothing is known about the regularizer and every field applies.
    """
    if not param.startswith("regularizer.") or "regularizer.target" not in config:
        return True
    field = param.removeprefix("regularizer.")
    target = config.get("regularizer.target")
    target = "none" if _missing(target) else str(target)
    if field == "target":
        return True
    if field == "alpha":
        return target != "none"
    from neuroreg.config import regularizer_active

    alpha = config.get("regularizer.alpha")
    if not regularizer_active(target, 1.0 if _missing(alpha) else alpha):  # unknown alpha: blank nothing
        return False
    if field in _target_fields():
        return field in _target_params(target, config.get("regularizer.shuffle_of"))
    if field in _DEPENDS:
        other, values = _DEPENDS[field]
        got = config.get(f"regularizer.{other}")
        return _missing(got) or str(got) in values
    return True
