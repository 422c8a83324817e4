"""Arms and their keys: which configuration a trial trained, read from the config columns.

``arm_labels`` names each trial's arm within its sweep (seeds are repetitions, never arms);
``config_keys`` hashes the configuration without its seed into keys that are the same in
every sweep (``arm_key``, ``condition_key``).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pandas as pd

from analysis.schema import ALIASES
from neuroreg.config import NULL_MEANS, regularizer_active
from neuroreg.targets import target_params

_SHORT = {v: k for k, v in ALIASES.items()}


def is_seed_column(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last == "seed" or last.endswith("_seed")


# Fields that change where or how fast a run goes, not what it trains; never part of a key.
NOT_IDENTITY = (
    "train.device", "train.num_threads", "train.check_finite_every", "train.compile", "train.deterministic",
    "data.root", "data.download", "regularizer.data.root", "regularizer.data.download",
)


def arm_keys(df: pd.DataFrame, config_cols: list[str], active: pd.Series) -> pd.DataFrame:
    """Sweep-independent keys: ``arm_key`` identifies the trained configuration without its
    seed (the same in every sweep that trains it), ``condition_key`` its non-regularizer part.
    Evaluation settings are measurement, not configuration; an inactive regularizer's fields
    do not matter (every baseline of a condition shares one key)."""
    cols = [c for c in config_cols if not is_seed_column(c) and c not in NOT_IDENTITY
            and not c.startswith("evaluation.")]
    cond_cols = [c for c in cols if not c.startswith("regularizer.")]
    reg_cols = [c for c in cols if c.startswith("regularizer.")]

    def digest(d: dict) -> str:
        text = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    arm_keys, cond_keys = [], []
    for i in df.index:
        cond = {c: _key_value(df.at[i, c]) for c in cond_cols}
        reg = {c: _key_value(df.at[i, c]) for c in reg_cols} if active[i] else {"regularizer.target": "none"}
        cond_keys.append(digest(cond))
        arm_keys.append(digest({**cond, **reg}))
    return pd.DataFrame({"arm_key": arm_keys, "condition_key": cond_keys}, index=df.index)


def _key_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v.item() if hasattr(v, "item") else v


def arm_labels(df: pd.DataFrame, config_cols: list[str]) -> pd.DataFrame:
    """Label each trial's experimental arm from the config columns that vary in this sweep.

    Seeds are repetitions, not arms. An inactive regularizer (target none or alpha 0)
    is one arm, 'none', whatever its other regularizer fields say; Th only labels
    targets that use it.
    """
    varying = [
        c for c in config_cols
        if not is_seed_column(c) and df[c].astype(str).nunique(dropna=False) > 1
    ]
    target = df["regularizer.target"] if "regularizer.target" in df else pd.Series("none", index=df.index)
    alpha = pd.to_numeric(df.get("regularizer.alpha", pd.Series(0.0, index=df.index)), errors="coerce")
    has_reg = "regularizer.target" in df
    active = (pd.Series([regularizer_active(t, a) for t, a in zip(target, alpha.fillna(0))], index=df.index)
              if has_reg else pd.Series(False, index=df.index))
    shuffle_of = df["regularizer.shuffle_of"] if "regularizer.shuffle_of" in df else pd.Series("", index=df.index)
    arms, conds = [], []
    for i in df.index:
        reg_parts, cond_parts = [], []
        for c in varying:
            v = df.at[i, c]
            text = f"{_SHORT.get(c, c)}={_fmt(v, NULL_MEANS.get(c))}"
            if c.startswith("regularizer."):
                if not active[i] or c == "regularizer.target":
                    continue
                if c == "regularizer.th" and "th" not in target_params(target[i], shuffle_of[i]):
                    continue
                reg_parts.append(text)
            else:
                cond_parts.append(text)
        if has_reg:
            reg = " ".join([str(target[i])] + reg_parts) if active[i] else "none"
        else:
            reg = " ".join(reg_parts) or "all"
        cond = " ".join(cond_parts)
        arms.append(f"{reg} | {cond}" if cond else reg)
        conds.append(cond)
    return pd.DataFrame({"arm": arms, "condition": conds, "baseline": ~active}, index=df.index)


def _fmt(v: Any, null: str | None = None) -> str:
    """A config value for a label; ``null``: what a null says in this field (config.NULL_MEANS)."""
    if null is not None and _key_value(v) is None:
        return null
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
