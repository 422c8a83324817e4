"""A filter that matches nothing says what its column holds (issue 23, item 5).

The fake sweep's noise levels are gaussian 0, 0.04, 0.08 and uniform 0, 0.1 (test_analysis)."""

from __future__ import annotations

import pandas as pd
import pytest
from test_analysis import write_fake_sweep

from analysis.gather import gather
from analysis.query import main as query_main
from analysis.query import no_rows_hint, present_values
from analysis.sql import main as sql_main


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("results")
    gather(write_fake_sweep(tmp_path_factory.mktemp("storage"), "sweep_a"), r)
    return r


def _query(root, capsys, *args) -> tuple[str, list[str]]:
    assert query_main(["noise", "--results", str(root), *args]) == 0
    cap = capsys.readouterr()
    return cap.out, [line for line in cap.err.splitlines() if line]


def _sql(root, capsys, sql) -> tuple[str, list[str]]:
    assert sql_main(["--results", str(root), sql]) == 0
    cap = capsys.readouterr()
    return cap.out, [line for line in cap.err.splitlines() if line]


def test_a_level_not_present_lists_the_levels_of_that_noise(root, capsys):
    out, err = _query(root, capsys, "--noise", "gaussian", "--level", "0.05", "--by", "arm", "--value", "accuracy")
    assert out.strip() == "(no rows)"
    assert err == ["hint: level=0.05 matches no row; level has 0, 0.04, 0.08 where noise=gaussian"]
    # scoped by the other filters: 0.04 is a Gaussian level, not a uniform one
    _, err = _query(root, capsys, "--noise", "uniform", "--level", "0.04")
    assert err == ["hint: level=0.04 matches no row; level has 0, 0.1 where noise=uniform",
                   "hint: noise=uniform matches no row; noise has gaussian where level=0.04"]


def test_two_misses_each_list_the_whole_column(root, capsys):
    _, err = _query(root, capsys, "--noise", "gauss", "--level", "0.5")
    assert err == ["hint: level=0.5 matches no row; level has 0, 0.04, 0.08, 0.1",
                   "hint: noise=gauss matches no row; noise has gaussian, uniform"]


def test_an_expression_names_the_columns_it_compares(root, capsys):
    _, err = _query(root, capsys, "--where", "level > 0.5 and noise == 'gaussian'")
    assert err == ["hint: level > 0.5 and noise == 'gaussian' matches no row; level has 0, 0.04, 0.08, 0.1",
                   "hint: level > 0.5 and noise == 'gaussian' matches no row; noise has gaussian, uniform"]


def test_rows_found_means_no_hint(root, capsys):
    out, err = _query(root, capsys, "--noise", "gaussian", "--level", "0.08", "--by", "arm", "--value", "accuracy")
    assert "(no rows)" not in out and err == []


def test_no_single_filter_to_blame():
    df = pd.DataFrame({"a": [1, 2, 2], "b": ["y", "x", "y"], "c": ["p", "p", "q"]})
    assert no_rows_hint(df, ["a=1", "b=x", "c=q"]) == [
        "each filter matches some rows, but no row meets all of: a=1; b=x; c=q"]
    assert no_rows_hint(df.iloc[:0], ["a=1"]) == ["the table holds no rows in these sweeps (was its suite run?)"]


def test_present_values_are_short():
    assert present_values(pd.Series([0.1, 0.05, None, 0.1])) == "0.05, 0.1"
    assert present_values(pd.Series([i / 10 for i in range(40)])) == "40 values from 0 to 3.9"
    assert present_values(pd.Series([f"s{i:02d}" for i in range(20)])).endswith("s11, ... (20 in all)")
    assert present_values(pd.Series([None, None], dtype=object)) == "only missing values"


def test_sql_names_the_comparison_that_finds_nothing(root, capsys):
    out, err = _sql(root, capsys, "SELECT n.accuracy FROM noise n JOIN trials t USING (sweep, trial_id) "
                                  "WHERE n.noise = 'gaussian' AND n.level IN (0.05, 0.06) AND t.sweep = 'sweep_a'")
    assert out.strip() == "(no rows)"
    assert err == ["hint: n.level IN (0.05, 0.06): no row of noise has that; noise.level has 0, 0.04, 0.08, 0.1"]
    _, err = _sql(root, capsys, "SELECT * FROM trials WHERE sweep = 'alpha_th-check'")
    assert err == ["hint: sweep = 'alpha_th-check': no row of trials has that; trials.sweep has sweep_a "
                   "(latest() is 'sweep_a')"]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM noise WHERE level > 5",  # not an equality: nothing to list
    "SELECT * FROM noise WHERE level = 0.08 AND noise = 'uniform'",  # each value exists: no false blame
    # the compared column is not the view's: a CTE, a CTE shadowing a view, a subquery
    "WITH x AS (SELECT level * 100 AS level FROM noise) SELECT * FROM x WHERE level = 7",
    "WITH noise AS (SELECT level * 100 AS level FROM noise n) SELECT * FROM noise n WHERE n.level = 7",
    "SELECT * FROM (SELECT n.level * 100 AS level FROM noise n) n WHERE n.level = 7",
])
def test_sql_gives_no_hint_it_cannot_stand_behind(root, capsys, sql):
    out, err = _sql(root, capsys, sql)
    assert out.strip() == "(no rows)" and err == []
