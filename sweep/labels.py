"""What a trial's parameters mean for its arm: which apply, its label, its seed, and the
legend of the derived columns the console prints.

Shared by the closing table (``sweep.report``), the progress lines (``sweep.progress``),
TensorBoard run names (``sweep.tuner.ArmSeedTBXLogger``) and the Optuna study's trial
attributes (``sweep.study``), so every place names an arm and a seed the same way.
"""

from __future__ import annotations

import math
from typing import Any

from neuroreg.applicable import applies as _applies
from neuroreg.config import regularizer_active

TRIAL_INDEX = "__trial_index__"

NOT_APPLICABLE = "–"
"""Shown for a parameter that means nothing for an arm (th of a baseline) or a missing value."""

# The fields that decide whether another regularizer field is read (neuroreg.applicable).
_DECIDING = tuple(f"regularizer.{f}" for f in ("target", "alpha", "shuffle_of", "pairing", "centering", "loss"))

LEGEND: dict[str, str] = {
    "status": "done (trained and evaluated), stopped (ended early by the scheduler or the time budget), "
              "error, interrupted (continue with --resume)",
    "seed": "train.seed of the trial (its value, not its position in the seed list)",
    "epochs": "epochs trained (Tune's training_iteration counts the evaluation report as one more)",
    "best_val_acc": "highest validation accuracy over the epochs",
    "clean_acc": "test accuracy of the evaluated checkpoint (train.evaluate_checkpoint), unperturbed images",
    "noise_acc_mean": "mean test accuracy over every noise level above 0, all noise types evaluated "
                      "(evaluation.noise_types), each level weighted equally",
    "median_l2": "median over the attacked test images (evaluation.n_images) of the smallest verified L2 "
                 "perturbation that changes the prediction, pixels in [0, 1] (0: already misclassified; "
                 "inf: no attack found one)",
    "median_linf": "the same in the L-infinity norm",
}


def _lookup(key: str, params: dict[str, Any], base: dict[str, Any] | None) -> Any:
    if key in params:
        return params[key]
    obj: Any = base or {}
    for part in key.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def applies(key: str, params: dict[str, Any], base: dict[str, Any] | None = None) -> bool:
    """Whether the dotted config ``key`` means anything for a trial with these parameters.

    ``params``: the trial's dotted parameters; ``base``: the sweep's base config (nested),
    consulted for the regularizer fields the trial does not set. The rule is
    neuroreg.applicable.applies, the one the reports use."""
    flat = {k: v for k in _DECIDING if (v := _lookup(k, params, base)) is not None}
    return _applies(key, flat)


def short_name(key: str) -> str:
    """regularizer.alpha -> alpha; train.seed -> seed."""
    return key.rsplit(".", 1)[-1]


def fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "+".join(str(x) for x in v)
    return str(v)


def arm_label(params: dict[str, Any], base: dict[str, Any] | None = None, sep: str = ",") -> str:
    """A trial's arm from its own parameters: ``none`` for an inactive regularizer (as
    analysis.arms labels a baseline), else the target then ``name=value`` for every parameter
    that applies, the seed left out (seeds repeat an arm)."""
    target = _lookup("regularizer.target", params, base)
    alpha = _lookup("regularizer.alpha", params, base)
    if target is not None and not regularizer_active(target, 1.0 if alpha is None else alpha):
        parts = ["none"]
    else:
        parts = [str(target)] if target is not None else []
    for k, v in params.items():
        if k in ("regularizer.target", "train.seed") or not applies(k, params, base):
            continue
        if not k.startswith("regularizer.") or parts[:1] != ["none"]:
            parts.append(f"{short_name(k)}={fmt_value(v)}")
    return sep.join(parts) or "base"


def trial_seed(config: dict[str, Any], seeds: list[int] | None, base: dict[str, Any] | None = None) -> int | None:
    """train.seed of a trial config ({"params": ..., "__trial_index__": i}): its own
    parameter, else the seed list's entry at its index, else the base's."""
    params = config.get("params") or {}
    if "train.seed" in params:
        return int(params["train.seed"])
    index = config.get(TRIAL_INDEX)
    if index is not None and seeds and 0 <= int(index) < len(seeds):
        return int(seeds[int(index)])
    seed = _lookup("train.seed", {}, base)
    return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) and math.isfinite(seed) \
        else None


def legend(columns: list[str]) -> str:
    """One line per shown column that the legend explains, aligned."""
    shown = [c for c in columns if c in LEGEND]
    if not shown:
        return ""
    width = max(len(c) for c in shown)
    lines = [f"  {c:<{width}}  {LEGEND[c]}" for c in shown]
    lines.append(f"  {NOT_APPLICABLE:<{width}}  not applicable to the arm (a baseline reads no regularizer field; "
                 "th only for pixel_th) or not measured")
    return "\n".join(lines)
