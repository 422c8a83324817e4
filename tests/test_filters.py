"""--where expressions are parsed, never run as code (issue 15's security case)."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.filters import FilterError, parse_filter
from analysis.query import resolve, select

DF = pd.DataFrame({
    "regularizer.alpha": [0.5, 1.0, 4.0, None],
    "regularizer.target": ["pixel", "pixel_th", "pixel_th", "none"],
    "noise_acc_gaussian_0.08": [0.9, 0.8, 0.7, 0.6],
    "baseline": [False, False, False, True],
})


def rows(expr: str) -> list[int]:
    return list(DF.index[parse_filter(expr, DF, resolve)])


def test_comparisons_and_or_not_parentheses():
    assert rows("alpha >= 1") == [1, 2]
    assert rows("alpha > 0.6 and target == 'pixel_th'") == [1, 2]
    assert rows("target == pixel or alpha == 4") == [0, 2]
    assert rows("not (alpha < 2 or alpha == null)") == [2]
    assert rows("alpha == null") == [3]
    assert rows("noise_acc_gaussian_0.08 < 0.75") == [2, 3]
    assert rows("`regularizer.alpha` != 1") == [0, 2]
    assert rows("baseline == true") == [3]
    assert rows("target == 'pixel' or target == 'none' and alpha == null") == [0, 3]  # and before or


@pytest.mark.parametrize("hostile", [
    "__import__('os').system('touch PWNED')",
    "alpha.__class__.__mro__",
    "@pd.io.common.os.system('touch PWNED')",
    "alpha > 1; import os",
    "alpha > (lambda: 1)()",
])
def test_code_is_refused_not_run(hostile, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((FilterError, KeyError)):
        select(DF, [hostile])
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(("bad", "says"), [
    ("alpha >", "ends early"),
    ("alpha 1", "expected one of"),
    ("alpha > 1 target == x", "unexpected"),
    ("(alpha > 1", r"missing '\)'"),
    ("alpha < null", "null can only"),
])
def test_malformed_filters_say_what_is_wrong(bad, says):
    with pytest.raises(FilterError, match=says):
        parse_filter(bad, DF, resolve)


def test_unknown_column_is_named():
    with pytest.raises(KeyError, match="nosuch"):
        parse_filter("nosuch > 1", DF, resolve)
