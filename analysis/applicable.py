"""Reports' view of which configuration fields a trial used (the rule: neuroreg.applicable):
masks over a trials table, and a copy with the unused values blanked, so tables print '–'
there and plots leave them out."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from neuroreg.applicable import applies

__all__ = ["applies", "applies_mask", "blank_inapplicable"]


def applies_mask(df: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """A boolean frame (df's index, ``params`` as columns): whether each row used each field."""
    rows = df.to_dict("index")
    return pd.DataFrame({p: [applies(p, rows[i]) for i in df.index] for p in params}, index=df.index, dtype=bool)


def blank_inapplicable(df: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """A copy of ``df`` whose values of ``params`` are missing (NaN / None) where they do not
    apply, so tables print '–' there and plots leave them out."""
    params = [p for p in params if p in df.columns]
    out = df.copy()
    if not len(df) or not params:
        return out
    mask = applies_mask(df, params)
    for p in params:
        out[p] = out[p].where(mask[p])  # numbers become NaN, other values None/NaN
    return out
